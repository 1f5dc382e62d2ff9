"""VLA policies: a native PyTorch OpenVLA (no ``trust_remote_code``) with loading, saving and tiny checkpoints.

Names are resolved lazily (PEP 562) so ``crane_x7_vla.models.*_cli`` modules can be imported by the CLI
without importing torch/transformers until a command actually runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "OpenVLA": "crane_x7_vla.models.openvla",
    "MiniVLA": "crane_x7_vla.models.minivla",
    "MiniVLAConfig": "crane_x7_vla.models.minivla_config",
    "load_minivla": "crane_x7_vla.models.minivla_loading",
    "make_tiny_minivla_checkpoint": "crane_x7_vla.models.minivla_tiny",
    "OpenVLAConfig": "crane_x7_vla.models.config",
    "ViTConfig": "crane_x7_vla.models.config",
    "ModelInputs": "crane_x7_vla.models.processing",
    "SampleOutput": "crane_x7_vla.models.generate",
    "load_vla": "crane_x7_vla.models.loading",
    "save_pretrained": "crane_x7_vla.models.loading",
    "resolve_checkpoint": "crane_x7_vla.models.loading",
    "make_tiny_checkpoint": "crane_x7_vla.models.tiny",
    "ActionTokenizer": "crane_x7_vla.models.action_tokenizer",
    "ActionStats": "crane_x7_vla.models.normalization",
}
__all__ = [
    "ActionStats",
    "ActionTokenizer",
    "MiniVLA",
    "MiniVLAConfig",
    "ModelInputs",
    "OpenVLA",
    "OpenVLAConfig",
    "SampleOutput",
    "ViTConfig",
    "load_minivla",
    "load_vla",
    "make_tiny_checkpoint",
    "make_tiny_minivla_checkpoint",
    "resolve_checkpoint",
    "save_pretrained",
]

if TYPE_CHECKING:
    from crane_x7_vla.models.action_tokenizer import ActionTokenizer
    from crane_x7_vla.models.config import OpenVLAConfig, ViTConfig
    from crane_x7_vla.models.generate import SampleOutput
    from crane_x7_vla.models.loading import load_vla, resolve_checkpoint, save_pretrained
    from crane_x7_vla.models.minivla import MiniVLA
    from crane_x7_vla.models.minivla_config import MiniVLAConfig
    from crane_x7_vla.models.minivla_loading import load_minivla
    from crane_x7_vla.models.minivla_tiny import make_tiny_minivla_checkpoint
    from crane_x7_vla.models.normalization import ActionStats
    from crane_x7_vla.models.openvla import OpenVLA
    from crane_x7_vla.models.processing import ModelInputs
    from crane_x7_vla.models.tiny import make_tiny_checkpoint


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crane_x7_vla.models' has no attribute {name!r}")
