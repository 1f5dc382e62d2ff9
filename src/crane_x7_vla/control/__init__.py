"""Robot-side controller: ``/vla/predicted_action`` -> safe FollowJointTrajectory / GripperCommand goals.

Pure safety logic in :mod:`.safety`; the rosbridge wiring in :mod:`.controller`; ``crane-x7-vla controller``
in :mod:`.cli`. No torch.
"""
