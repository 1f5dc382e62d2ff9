"""Continuous batching: requests join running decodes at step boundaries and still get the release's actions."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
from robot_threads import predict_concurrently

from crane_x7_vla.models import OpenVLA
from crane_x7_vla.models.batcher import BatchedPrediction
from crane_x7_vla.models.continuous import ContinuousBatcher
from crane_x7_vla.models.engine import OpenVLAEngine

INSTRUCTIONS = ["pick up the red block", "go", "Place the blue cube on the green plate, then open the gripper"]


@pytest.fixture(scope="module")
def engine(tiny_model: OpenVLA) -> OpenVLAEngine:
    return OpenVLAEngine(tiny_model, max_batch=4, text_bucket=8)


@pytest.fixture(scope="module")
def want(tiny_model: OpenVLA, images: list[np.ndarray]) -> np.ndarray:
    """The release's eager greedy actions, one request at a time."""
    return np.concatenate([tiny_model.predict_action(images[i : i + 1], INSTRUCTIONS[i : i + 1]) for i in range(3)])


def _submit(b: ContinuousBatcher, images: list[np.ndarray], i: int) -> Future[BatchedPrediction]:
    return b.submit(b.prepare_inputs([images[i]], [INSTRUCTIONS[i]]))


@pytest.mark.parametrize("pipeline", [False, True])
def test_prefills_join_running_decodes_and_match_the_eager_loop(engine: OpenVLAEngine, images: list[np.ndarray],
                                                                want: np.ndarray, pipeline: bool) -> None:
    d = engine.model.action_dim
    b = ContinuousBatcher(engine, slots=3, max_prefill=2, start=False, pipeline=pipeline)
    first = _submit(b, images, 0)
    b.step()  # request 0: prefill (token 1 of d)
    b.step()  # request 0: decode
    later = [_submit(b, images, 1), _submit(b, images, 2)]
    # Requests 1 and 2 (prompts of different lengths, one bucket) prefill in the step that decodes request 0.
    resolved = [b.step() for _ in range(d - 1)]  # calls 3 .. d + 1; request 0's last token is in step d
    # Pipelined, a step's requests are resolved by the next call (it waits for the step behind the next one).
    assert resolved.index(1) == (d - 2 if pipeline else d - 3)
    assert first.done() and sum(resolved) == 1 and not any(f.done() for f in later)
    while not all(f.done() for f in later):
        b.step()
    assert b.steps_run == d + 2  # requests 1 and 2 decoded alongside request 0, not after it
    got = [f.result() for f in [first, *later]]
    np.testing.assert_allclose(np.stack([g.action for g in got]), want, atol=1e-6)
    assert [g.batch_size for g in got] == [3, 3, 3]  # every request shared steps with the other two
    assert b.step() == 0  # idle: nothing runs
    b.close()


def test_more_requests_than_slots_wait_for_a_free_slot(engine: OpenVLAEngine, images: list[np.ndarray],
                                                       want: np.ndarray) -> None:
    b = ContinuousBatcher(engine, slots=2, max_prefill=2, start=False, pipeline=True)
    order = [0, 1, 2, 0, 2]
    futures = [_submit(b, images, i) for i in order]
    while not all(f.done() for f in futures):
        b.step()
    assert b.steps_run == 3 * engine.model.action_dim  # two slots: pairs of requests, then the last one alone
    for f, i in zip(futures, order, strict=True):
        res = f.result()
        np.testing.assert_allclose(res.action, want[i], atol=1e-6)
        assert res.batch_size <= 2
    stats = b.stats()
    assert stats["requests"] == 5 and stats["latency_ms_p99"] >= stats["latency_ms_p50"] > 0
    b.close()


def test_threads_share_the_worker_and_close_refuses_new_requests(engine: OpenVLAEngine, images: list[np.ndarray],
                                                                 want: np.ndarray) -> None:
    b = ContinuousBatcher(engine, slots=3, max_prefill=3, pipeline=True)
    results = predict_concurrently(b, images[:3], INSTRUCTIONS, repeats=2)
    for i in range(3):
        np.testing.assert_allclose(results[i].action, want[i], atol=1e-6)
    np.testing.assert_allclose(b.predict_action(images, INSTRUCTIONS), want, atol=1e-6)  # the service's interface
    b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.predict(images[0], INSTRUCTIONS[0])


def test_a_failing_step_fails_its_requests_and_the_next_ones_are_served(engine: OpenVLAEngine,
                                                                        images: list[np.ndarray], want: np.ndarray,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    b = ContinuousBatcher(engine, slots=2, max_prefill=1, start=False)
    running = _submit(b, images, 0)
    b.step()
    real = engine.prefill_sequence

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(engine, "prefill_sequence", broken)
    joining = _submit(b, images, 1)
    b.step()
    for f in (running, joining):
        with pytest.raises(RuntimeError, match="illegal memory"):
            f.result(timeout=0)
    monkeypatch.setattr(engine, "prefill_sequence", real)
    after = _submit(b, images, 2)
    while not after.done():
        b.step()
    np.testing.assert_allclose(after.result().action, want[2], atol=1e-6)
    b.close()


def test_bad_requests_get_clear_errors(engine: OpenVLAEngine, tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    b = ContinuousBatcher(engine, slots=1, max_prompt_tokens=8, start=False)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        b.submit(b.prepare_inputs([images[2]], [INSTRUCTIONS[2]]))
    with pytest.raises(ValueError, match="one of each"):
        b.prepare_inputs(images[:2], INSTRUCTIONS[:1])
    with pytest.raises(ValueError, match="OpenVLAEngine"):
        ContinuousBatcher(tiny_model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_prefill"):
        ContinuousBatcher(engine, slots=2, max_prefill=3)
    b.close()


def test_warmup_leaves_idle_slots_and_no_records(engine: OpenVLAEngine, images: list[np.ndarray],
                                                 want: np.ndarray) -> None:
    b = ContinuousBatcher(engine, slots=2, max_prefill=2, start=False)
    b.warmup(INSTRUCTIONS[0])
    assert b.stats() == {}
    assert not bool(b._active.any())
    b.start()
    with pytest.raises(RuntimeError, match="before start"):
        b.warmup()
    np.testing.assert_allclose(b.predict(images[1], INSTRUCTIONS[1]).action, want[1], atol=1e-6)
    b.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_steps_match_the_eager_loop(tiny_ckpt: Path, images: list[np.ndarray],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA every step kind is a captured graph that advances the slots' state itself: staggered requests
    still get the eager loop's actions (float32, so kernels' rounding cannot flip a token)."""
    from crane_x7_vla.models import load_vla

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the patch-embedding convolutions in fp32 too
    model = load_vla(tiny_ckpt, device="cuda", dtype=torch.float32)
    want = np.concatenate([model.predict_action(images[i : i + 1], INSTRUCTIONS[i : i + 1]) for i in range(3)])
    b = ContinuousBatcher(OpenVLAEngine(model, text_bucket=8), slots=2, max_prefill=2, start=False)
    assert b.pipeline
    order = [0, 1, 2, 2, 0, 1, 1]
    futures = [_submit(b, images, order[0])]
    for i in order[1:]:  # one new request per step: prefills join running decodes in every step kind
        b.step()
        futures.append(_submit(b, images, i))
    while not all(f.done() for f in futures):
        b.step()
    for f, i in zip(futures, order, strict=True):
        np.testing.assert_allclose(f.result().action, want[i], atol=1e-5)
    assert b._decode_graph is not None and b._admits and b._visions
    # The engine's own batch-1 graph (its two vision towers on two streams) gives the same actions.
    assert b.engine._tower_stream is not None
    np.testing.assert_allclose(b.engine.predict(images[2:3], INSTRUCTIONS[2:3]), want[2:3], atol=1e-5)
    b.close()
