"""A simulated CRANE-X7 behind the rosbridge server (``crane-x7-vla sim-bridge``): the robot's topics and
actions without ROS. :mod:`.trajectory` (pure interpolation), :mod:`.robot` (sim thread), :mod:`.bridge` (wiring).
"""
