"""Rollouts: the batched env <-> policy loop (:mod:`.collector`) and the on-device storage (:mod:`.buffer`)."""
