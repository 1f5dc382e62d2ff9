"""``crane-x7-vla infer`` with MiniVLA checkpoints: VLA_VQ_PATH feeds the loader, model-dependent settings fail at load."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from crane_x7_vla.inference import cli


@pytest.fixture(scope="module")
def vq_ckpt_and_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny VQ MiniVLA whose VQ weights live OUTSIDE the checkpoint (as the published ones do)."""
    from crane_x7_vla.models import make_tiny_minivla_checkpoint

    root = tmp_path_factory.mktemp("cli_minivla")
    ckpt = make_tiny_minivla_checkpoint(root / "ckpt", vq=True, action_dim=8, seed=4)
    weights = root / "pretrain_vq_run"
    shutil.move(str(ckpt / "vq"), weights)
    return ckpt, weights


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return parser.parse_args(list(argv))


def test_vq_path_setting_reaches_the_loader(vq_ckpt_and_weights: tuple[Path, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from crane_x7_vla.inference.settings import resolve_settings

    ckpt, weights = vq_ckpt_and_weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the published VQ location must not be fetched in a test
    env = {"VLA_MODEL_PATH": str(ckpt), "VLA_DEVICE": "cpu", "VLA_VQ_PATH": str(weights)}
    model = cli.load_policy(resolve_settings(args(), env))
    assert model.chunk_size == 8 and model.num_action_tokens == 7
    with pytest.raises(FileNotFoundError, match="vq_path"):  # without it: no <ckpt>/vq, Hub offline
        cli.load_policy(resolve_settings(args(), {k: v for k, v in env.items() if k != "VLA_VQ_PATH"}))


def test_chunk_steps_beyond_the_models_chunk_exit_2_before_connecting(
        vq_ckpt_and_weights: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, weights = vq_ckpt_and_weights
    for k in ("VLA_CHUNK_STEPS", "VLA_WRIST_IMAGE_TOPIC", "VLA_VQ_PATH"):
        monkeypatch.delenv(k, raising=False)
    # An unreachable rosbridge port: reaching the connect step would fail differently (exit 1) or wait.
    code = cli.main(args("--model-path", str(ckpt), "--device", "cpu", "--vq-path", str(weights),
                         "--chunk-steps", "9", "--rosbridge-host", "127.0.0.1", "--rosbridge-port", "1",
                         "--peer-wait-timeout", "0"))
    assert code == 2
    err = capsys.readouterr().err
    assert "exceeds this model's chunk length 8" in err and "from 1 to 8" in err
