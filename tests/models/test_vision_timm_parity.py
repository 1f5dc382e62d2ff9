"""Our ViT towers == timm's (same weights, same features), where timm can be imported.

timm imports torchvision at import time; the CPU-only torch used by CI has no torchvision build, so this module
skips there and runs on GPU machines that have timm (``pytest tests/models/test_vision_timm_parity.py``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

try:
    import timm
except Exception as e:  # ImportError, or torchvision failing to register its C++ ops
    pytest.skip(f"timm cannot be imported here ({type(e).__name__}: {e}); run on a machine with timm", allow_module_level=True)

from crane_x7_vla.models.config import KNOWN_VISION_TOWERS
from crane_x7_vla.models.vision import VisionTransformer, timm_to_openvla_keys

DINO, SIGLIP = "vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"
# (timm id, overrides for a quick variant or none for the real size)
CASES = [
    (DINO, {}),
    (SIGLIP, {}),
    (DINO, {"embed_dim": 64, "depth": 4, "num_heads": 4}),
    (SIGLIP, {"embed_dim": 72, "depth": 4, "num_heads": 4}),
]


@pytest.mark.parametrize(("timm_id", "overrides"), CASES, ids=["dino", "siglip", "dino-small", "siglip-small"])
@torch.no_grad()
def test_tower_matches_timm(timm_id: str, overrides: dict[str, int]) -> None:
    ref = timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=224, **overrides).eval()
    g = torch.Generator().manual_seed(0)
    for p in ref.parameters():  # non-trivial weights everywhere (LayerScale init 1e-5 would hide bugs)
        p.copy_(0.05 * torch.randn(p.shape, generator=g))
    cfg = KNOWN_VISION_TOWERS[timm_id]
    if overrides:
        mlp = int(overrides["embed_dim"] * cfg.mlp_dim / cfg.embed_dim)
        cfg = replace(cfg, embed_dim=overrides["embed_dim"], depth=overrides["depth"],
                      num_heads=overrides["num_heads"], mlp_dim=mlp)
    ours = VisionTransformer(cfg).eval()
    theirs = timm_to_openvla_keys(ref.state_dict())
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    x = torch.randn(2, 3, 224, 224, generator=g)
    (expected,) = ref.get_intermediate_layers(x, n={len(ref.blocks) - 2})  # what OpenVLA calls
    torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=1e-4)
