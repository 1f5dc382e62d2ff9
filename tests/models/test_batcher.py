"""Concurrent robots' requests are coalesced into bounded batches and each gets its own row back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from robot_threads import predict_concurrently

from crane_x7_vla.models import OpenVLA
from crane_x7_vla.models.batcher import BatchedPolicy, stack_inputs
from crane_x7_vla.models.engine import OpenVLAEngine
from crane_x7_vla.models.processing import ModelInputs

INSTRUCTIONS = ["pick up the red block", "go", "Place the blue cube on the green plate, then open the gripper"]


def test_stack_inputs_left_pads_prompts_of_different_lengths(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    parts = [tiny_model.prepare_inputs(images[i : i + 1], INSTRUCTIONS[i : i + 1]) for i in range(3)]
    stacked = stack_inputs(parts, tiny_model.config.pad_token_id)
    whole = tiny_model.prepare_inputs(images, INSTRUCTIONS)
    assert torch.equal(stacked.input_ids, whole.input_ids)
    assert torch.equal(stacked.attention_mask, whole.attention_mask)
    assert torch.equal(stacked.pixel_values, whole.pixel_values)
    stacked.check_left_padded()


def test_concurrent_robots_share_one_call_and_get_their_own_actions(tiny_model: OpenVLA,
                                                                    images: list[np.ndarray]) -> None:
    engine = OpenVLAEngine(tiny_model, max_batch=4, text_bucket=8)
    want = [engine.predict(images[i : i + 1], INSTRUCTIONS[i : i + 1])[0] for i in range(3)]
    # A long window: the three requests, submitted together, must land in one batch.
    batched = BatchedPolicy(engine, max_batch=4, max_wait_s=2.0)
    results = predict_concurrently(batched, images[:3], INSTRUCTIONS, timeout=30)
    batched.close()
    for i in range(3):
        res = results[i]
        assert res.batch_size == 3  # type: ignore[attr-defined]
        np.testing.assert_allclose(res.action, want[i], atol=1e-6)  # type: ignore[attr-defined]
        assert res.latency_s >= res.model_s > 0  # type: ignore[attr-defined]
    stats = batched.stats()
    assert stats["requests"] == 3 and stats["mean_batch"] == 3


def test_service_interface_and_batch_limit(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    batched = BatchedPolicy(tiny_model, max_batch=2, max_wait_s=0.0)
    inputs = batched.prepare_inputs(images, INSTRUCTIONS)  # one caller's 3 rows -> batches of at most 2
    np.testing.assert_allclose(batched.predict_from_inputs(inputs), tiny_model.predict_action(images, INSTRUCTIONS),
                               atol=1e-6)
    with pytest.raises(ValueError, match="unnorm_key"):  # one shared call has one key: the batcher's
        batched.predict_from_inputs(inputs, unnorm_key="another_dataset")
    assert batched.action_dim == tiny_model.action_dim  # other attributes are the model's
    assert not hasattr(batched, "predict_action_chunk")  # a chunk call would bypass the batch
    batched.close()
    with pytest.raises(RuntimeError, match="closed"):
        batched.predict(images[0], "go")


def test_a_failing_batch_fails_only_its_requests(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    batched = BatchedPolicy(tiny_model, max_batch=1, max_wait_s=0.0)
    good = tiny_model.prepare_inputs(images[:1], INSTRUCTIONS[:1])
    bad = ModelInputs(good.pixel_values[:, :, :5], good.input_ids, good.attention_mask)  # wrong image size
    with pytest.raises(RuntimeError):
        batched.submit(bad).result(timeout=30)
    ok = batched.submit(good).result(timeout=30)
    assert ok.action.shape == (tiny_model.action_dim,) and ok.batch_size == 1
    batched.close()


def test_rejects_policies_it_cannot_batch() -> None:
    with pytest.raises(ValueError, match="prepare_inputs"):
        BatchedPolicy(object())
