"""crane-x7-vla: Vision-Language-Action models for the CRANE-X7 arm on remote GPUs.

Layers (each imports only those below it): ``robot`` (facts, FK) -> ``bridge`` (rosbridge protocol,
client, server) and ``models`` (native OpenVLA / MiniVLA) and ``lift`` (simulators) -> ``inference``,
``control``, ``simbridge``, ``net`` -> ``cli``.
"""

__version__ = "0.1.0"
