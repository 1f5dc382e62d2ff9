"""The cost model of one action against the spec's numbers for openvla-7b (shared/specs/openvla.md section 8)."""

from __future__ import annotations

import pytest

from crane_x7_vla.models.config import OpenVLAConfig
from crane_x7_vla.models.cost import action_cost
from crane_x7_vla.models.presets import OPENVLA_7B

CONFIG = OpenVLAConfig.from_dict(OPENVLA_7B)


def test_openvla_7b_costs_what_the_spec_says() -> None:
    """~291 tokens, 7 action tokens: a decode pass reads ~13.2 GB of LLM weights, the prefill is ~3.8 TFLOP,
    and at 4.8 TB/s and 989 TFLOP/s the action cannot take less than ~21 ms (the spec's realistic bound)."""
    cost = action_cost(CONFIG, prompt_tokens=35, action_dim=7)  # 35 + 256 patches = 291 rows
    assert cost.decode_passes == 6
    assert 13.1e9 < cost.prefill_bytes < 13.6e9  # Llama-2-7b with the padded vocabulary: 6.74 B params in bf16
    assert cost.prefill_bytes < cost.decode_pass_bytes < cost.prefill_bytes + 0.2e9  # + the K/V of 298 slots
    assert 3.6e12 < cost.prefill_flops < 3.9e12
    assert 1.4e9 < cost.vision_bytes < 1.7e9  # DINOv2-L + SigLIP-so400m (the blocks that run) + projector
    floor = cost.floor_ms(4.8, 989.0)
    assert 19.6 < floor < 22.0
    phases = cost.phases_ms(4.8, 989.0)
    assert phases["decode"] == pytest.approx(6 * cost.decode_pass_bytes / 4.8e9)
    assert phases["prefill"] == pytest.approx(cost.prefill_flops / 989e9)  # compute-bound at these rates
    assert sum(phases.values()) == pytest.approx(floor)


def test_the_floor_follows_the_rates_and_the_action() -> None:
    cost = action_cost(CONFIG, prompt_tokens=26, action_dim=7)
    assert cost.floor_ms(4.3, 790.0) > cost.floor_ms(4.8, 989.0)
    slow_memory = cost.phases_ms(1.0, 989.0)
    assert slow_memory["prefill"] == pytest.approx(cost.prefill_bytes / 1e9)  # now bound by its weight reads
    longer = action_cost(CONFIG, prompt_tokens=26, action_dim=8)
    assert longer.decode_passes == 7 and longer.floor_ms(4.8, 989.0) > cost.floor_ms(4.8, 989.0)
    assert action_cost(CONFIG, prompt_tokens=60, action_dim=7).prefill_flops > cost.prefill_flops


@pytest.mark.parametrize(("prompt", "dim", "rates"), [(0, 7, (4.8, 989.0)), (26, 0, (4.8, 989.0)),
                                                      (26, 7, (0.0, 989.0)), (26, 7, (4.8, -1.0))])
def test_bad_arguments_are_refused(prompt: int, dim: int, rates: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        action_cost(CONFIG, prompt, dim).floor_ms(*rates)
