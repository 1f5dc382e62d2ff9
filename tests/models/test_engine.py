"""The static-cache engine reproduces the eager greedy path (CPU: same function, no CUDA graphs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crane_x7_vla.models import OpenVLA
from crane_x7_vla.models.engine import OpenVLAEngine

INSTRUCTIONS = ["pick up the red block", "go", "Place the blue cube on the green plate, then open the gripper"]


@pytest.fixture(scope="module")
def engine(tiny_model: OpenVLA) -> OpenVLAEngine:
    return OpenVLAEngine(tiny_model, max_batch=4, text_bucket=8)


def _eager_tokens(model: OpenVLA, images: list[np.ndarray], instructions: list[str]) -> torch.Tensor:
    """The eager loop's greedy tokens over the full vocabulary (what predict_action decodes)."""
    from crane_x7_vla.models.generate import _decode_loop

    lm_head = model.language_model.lm_head
    with torch.inference_mode():
        toks, _ = _decode_loop(model, model.prepare_inputs(images, instructions), model.action_dim,
                               lambda h: lm_head(h).argmax(dim=-1))
    return torch.stack(toks, dim=1)


def test_engine_matches_eager_single_and_batched(engine: OpenVLAEngine, tiny_model: OpenVLA,
                                                 images: list[np.ndarray]) -> None:
    for i in range(len(INSTRUCTIONS)):  # batch 1, different prompt lengths -> different buckets
        want = _eager_tokens(tiny_model, images[i : i + 1], INSTRUCTIONS[i : i + 1])
        got = engine.generate(tiny_model.prepare_inputs(images[i : i + 1], INSTRUCTIONS[i : i + 1]), 8)
        assert torch.equal(got, want), i
    want = _eager_tokens(tiny_model, images, INSTRUCTIONS)  # batch 3 -> padded to 4
    got = engine.generate(tiny_model.prepare_inputs(images, INSTRUCTIONS), 8)
    assert torch.equal(got, want)


def test_engine_predict_equals_predict_action(engine: OpenVLAEngine, tiny_model: OpenVLA,
                                              images: list[np.ndarray]) -> None:
    np.testing.assert_array_equal(engine.predict(images, INSTRUCTIONS), tiny_model.predict_action(images, INSTRUCTIONS))


def test_oversize_batch_is_split(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    small = OpenVLAEngine(tiny_model, max_batch=2, text_bucket=8)
    np.testing.assert_array_equal(small.predict(images, INSTRUCTIONS), tiny_model.predict_action(images, INSTRUCTIONS))


def test_cuda_graphs_need_cuda(tiny_model: OpenVLA) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        OpenVLAEngine(tiny_model, use_cuda_graphs=True)


def test_service_policy_interface(engine: OpenVLAEngine, tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    """The inference service may call prepare_inputs + predict_from_inputs (timed separately) or predict_action."""
    want = tiny_model.predict_action(images, INSTRUCTIONS)
    inputs = engine.prepare_inputs(images, INSTRUCTIONS)
    np.testing.assert_array_equal(engine.predict_from_inputs(inputs), want)
    np.testing.assert_array_equal(engine.predict_action(images, INSTRUCTIONS), want)
    np.testing.assert_array_equal(tiny_model.predict_from_inputs(tiny_model.prepare_inputs(images, INSTRUCTIONS)), want)
