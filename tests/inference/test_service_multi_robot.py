"""One service process serves two robots (two real rosbridge servers) with shared model calls: synchronous
batches over the model, continuous batching over the engine."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from inference_helpers import Rig, decoded, jpeg_bytes, loopback_settings, wait_until

from crane_x7_vla.bridge.messages import Float32MultiArray
from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.inference.cli import serve
from crane_x7_vla.inference.settings import resolve_settings


async def _two_robots(model: Any, policy: Any) -> None:
    async with RosbridgeServer(port=0) as a, RosbridgeServer(port=0) as b:
        rigs = [Rig(a), Rig(b)]
        # A window of half the 5 Hz period: the two robots' requests always meet in one batch.
        settings = loopback_settings(a.port, 5.0, extra_robots=(("127.0.0.1", b.port),), batch_wait_ms=100.0)
        stop = asyncio.Event()
        # Each robot's camera shows one fixed scene, so each robot's action is known.
        cams = [asyncio.create_task(rig.camera(seeds=(seed,))) for rig, seed in zip(rigs, (5, 6), strict=True)]
        run = asyncio.create_task(serve(settings, policy, stop))
        try:
            await wait_until(lambda: all(len(r.actions) >= 4 for r in rigs), 30)
            await wait_until(lambda: all(r.status and r.status[-1].get("batch") for r in rigs), 10)
        finally:
            stop.set()
            code = await asyncio.wait_for(run, 15)
            for cam in cams:
                cam.cancel()
        assert code == 0
        for rig, seed in zip(rigs, (5, 6), strict=True):
            want = np.asarray(model.predict_action([decoded(jpeg_bytes(seed))], [settings.instruction]))[0]
            for _, msg in rig.actions:  # each robot gets the actions for its own frames
                np.testing.assert_allclose(Float32MultiArray.from_dict(msg).data, want, atol=1e-5)
        batch = rigs[0].status[-1]["batch"]
        assert batch["latency_ms_p50"] > 0
        if policy is model:  # the window makes the two robots' requests meet; continuous steps need no window
            assert batch["mean_batch"] > 1.0
        assert not np.allclose(rigs[0].actions[-1][1]["data"], rigs[1].actions[-1][1]["data"])


def test_two_robots_share_batched_model_calls(tiny_model: Any) -> None:
    asyncio.run(asyncio.wait_for(_two_robots(tiny_model, tiny_model), 90))


def test_two_robots_share_the_engine_with_continuous_batching(tiny_model: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from crane_x7_vla.models.engine import OpenVLAEngine

    caplog.set_level("INFO")
    asyncio.run(asyncio.wait_for(_two_robots(tiny_model, OpenVLAEngine(tiny_model, max_batch=2)), 90))
    assert "continuous batching" in caplog.text


def test_extra_robot_settings() -> None:
    env = {"VLA_MODEL_PATH": "tiny", "VLA_EXTRA_ROBOTS": "crane-b, 100.64.0.7:9191", "ROSBRIDGE_PORT": "9095"}
    s = resolve_settings(None, env)
    assert s.robots == (("crane-x7-local", 9095), ("crane-b", 9095), ("100.64.0.7", 9191))
    assert s.batch_wait_ms == 4.0
    import argparse

    from crane_x7_vla.inference.settings import SettingsError, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--extra-robot", "r2:1", "--extra-robot", "bad host", "--batch-wait-ms", "-1"])
    with pytest.raises(SettingsError) as err:
        resolve_settings(args, {"VLA_MODEL_PATH": "tiny"})
    text = "\n".join(err.value.problems)
    assert "'bad host' is not HOST or HOST:PORT" in text and "--batch-wait-ms" in text
