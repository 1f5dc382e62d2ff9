"""Supervised warm-start (SFT) of OpenVLA-architecture policies on recorded demonstrations.

``dataset`` holds the pure parts (action statistics, the published token/label layout, right-padded batches),
``trainer`` the model side (small-model builder, the loss, the resumable training loop), ``cli`` the
``crane-x7-vla sft`` command. Nothing here imports torch at package import time.
"""
