"""Pure pieces of chunked / multi-image inference: ChunkExecutor, FrameWindow, FrameSlot.newest, model settings."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.inference.chunks import ChunkExecutor
from crane_x7_vla.inference.frames import Frame, FrameSlot, FrameWindow
from crane_x7_vla.inference.settings import (
    InferenceSettings,
    ModelIO,
    SettingsError,
    add_arguments,
    check_against_model,
    model_io,
    resolve_settings,
)


def chunk(k: int, d: int = 8) -> np.ndarray:
    return np.arange(k * d, dtype=np.float32).reshape(k, d)  # row i starts at i * d


def test_chunk_runs_first_n_steps_then_asks_for_the_model() -> None:
    ex = ChunkExecutor(3)
    first = ex.start(chunk(8))
    assert first.tolist() == chunk(8)[0].tolist() and ex.pending == 2
    got = [ex.pop(), ex.pop()]
    assert [g[0] for g in got if g is not None] == [8.0, 16.0]  # steps 1 and 2, in order
    assert ex.pop() is None  # used up: the caller runs the model
    assert (ex.chunks, ex.open_loop, dict(ex.discarded)) == (1, 2, {})


def test_default_single_step_never_queues() -> None:
    ex = ChunkExecutor(1)
    assert ex.start(chunk(8))[0] == 0.0 and ex.pending == 0 and ex.pop() is None


def test_discard_counts_by_reason_and_new_chunk_replaces_leftovers() -> None:
    ex = ChunkExecutor(4)
    ex.start(chunk(8))
    ex.pop()
    assert ex.discard("instruction") == 2 and ex.pending == 0 and ex.pop() is None
    assert ex.discard("instruction") == 0  # nothing left: not counted twice
    ex.start(chunk(8))
    ex.start(chunk(8))  # a chunk arriving while steps remain replaces them
    assert dict(ex.discarded) == {"instruction": 2, "replaced": 3}
    ex.start(chunk(8), queue_rest=False)  # the instruction changed while the model ran: step 0 only
    assert ex.pending == 0


def test_short_chunks_and_plain_actions() -> None:
    ex = ChunkExecutor(4)
    ex.start(chunk(2))  # a model with a shorter chunk: what there is
    assert ex.pending == 1
    assert ex.executed_part(np.zeros(8)).shape == (1, 8)  # a (D,) action is a chunk of one
    with pytest.raises(ValueError, match="chunk steps must be >= 1"):
        ChunkExecutor(0)
    with pytest.raises(ValueError, match=r"\(steps, action_dim\)"):
        ex.executed_part(np.zeros((0, 8)))


def frame(seq: int, mono: float = 10.0) -> Frame:
    return Frame(seq=seq, data=b"x", format="jpeg", received_mono=mono, received_wall=1000.0)


def test_frame_window_repeats_first_frame_dedups_and_resets() -> None:
    w = FrameWindow(2)
    assert [f.seq for f in w.push(frame(1))] == [1, 1]  # start: the current frame fills the window
    assert [f.seq for f in w.push(frame(1))] == [1, 1]  # the same frame seen again is not "new"
    assert [f.seq for f in w.push(frame(2))] == [1, 2]
    assert [f.seq for f in w.push(frame(5))] == [2, 5]
    w.reset()
    assert [f.seq for f in w.push(frame(6))] == [6, 6]
    assert [f.seq for f in FrameWindow(1).push(frame(3))] == [3]
    with pytest.raises(ValueError):
        FrameWindow(0)


def test_slot_newest_peeks_without_using() -> None:
    slot = FrameSlot(max_age=0.5)
    assert slot.newest(10.0, 1000.0) is None
    slot.put(frame(1, mono=10.0))
    f = slot.newest(10.1, 1000.0)
    assert f is not None and f.seq == 1
    assert slot.take(10.1, 1000.0)[0] == "ok"  # peeking did not use it up
    f = slot.newest(10.2, 1000.0)
    assert f is not None and f.seq == 1  # used frames still count as the newest view of the scene
    assert slot.newest(10.6, 1000.0) is None and slot.stale == 0  # too old; peeking counts nothing


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_chunk_wrist_and_vq_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"VLA_MODEL_PATH": "m", "VLA_CHUNK_STEPS": "4", "VLA_WRIST_IMAGE_TOPIC": "/wrist/image/compressed",
           "VLA_VQ_PATH": str(tmp_path)}
    s = resolve_settings(parse(), env)
    assert (s.chunk_steps, s.wrist_image_topic, s.vq_path) == (4, "/wrist/image/compressed", str(tmp_path))
    s = resolve_settings(parse("--chunk-steps", "2", "--vq-path", "org/repo/sub"), env)
    assert (s.chunk_steps, s.vq_path) == (2, "org/repo/sub")
    d = resolve_settings(parse(), {"VLA_MODEL_PATH": "m"})
    assert (d.chunk_steps, d.wrist_image_topic, d.vq_path) == (1, None, None)  # the published eval: every tick
    assert d.public_dict()["chunk_steps"] == 1
    with pytest.raises(SettingsError) as e:
        resolve_settings(parse("--chunk-steps", "0", "--wrist-image-topic", robot.CAMERA_COMPRESSED_TOPIC,
                               "--vq-path", str(tmp_path / "missing")), {"VLA_MODEL_PATH": "m"})
    text = str(e.value)
    assert "--chunk-steps='0'" in text and "wrist image topic" in text and "VQ path" in text
    assert len(e.value.problems) == 3
    with pytest.raises(SettingsError, match="VLA_CHUNK_STEPS='x' is not an integer"):
        resolve_settings(parse(), {"VLA_MODEL_PATH": "m", "VLA_CHUNK_STEPS": "x"})


def test_check_against_model() -> None:
    s = InferenceSettings(model_path="m", chunk_steps=4)
    assert check_against_model(s, ModelIO(chunk_size=8)) == []
    (msg,) = check_against_model(s, ModelIO(chunk_size=1))
    assert "exceeds this model's chunk length 1" in msg and "from 1 to 1" in msg
    (msg,) = check_against_model(InferenceSettings(model_path="m"), ModelIO(wrist=True))
    assert "--wrist-image-topic" in msg and "VLA_WRIST_IMAGE_TOPIC" in msg
    assert check_against_model(InferenceSettings(model_path="m", wrist_image_topic="/w"), ModelIO(wrist=True)) == []


def test_model_io_reads_the_model_and_looks_through_wrappers() -> None:
    mini = SimpleNamespace(chunk_size=8, config=SimpleNamespace(image_sequence_len=2, use_wrist_image=False))
    assert model_io(mini) == ModelIO(chunk_size=8, history=2, wrist=False)
    engine = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(use_wrist_image=True)))
    assert model_io(engine) == ModelIO(chunk_size=1, history=1, wrist=True)
    assert model_io(object()) == ModelIO() and ModelIO(history=2).num_images == 2
