"""Settings: the seed's env defaults, flags over env, every invalid value reported at once, no secret leaks."""

from __future__ import annotations

import argparse

import pytest

from crane_x7_vla.inference.settings import SettingsError, add_arguments, resolve_settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_seed_defaults_from_env() -> None:
    s = resolve_settings(parse(), {"VLA_MODEL_PATH": "openvla/openvla-7b"})
    assert (s.rosbridge_host, s.rosbridge_port, s.peer_wait_timeout) == ("crane-x7-local", 9090, 300.0)
    assert (s.instruction, s.device, s.inference_rate, s.unnorm_key) == ("pick up the object", "cuda", 10.0, "crane_x7")
    assert s.max_frame_age == 0.5 and s.rosbridge_proxy is None and s.hf_token is None


def test_env_values_are_used() -> None:
    env = {"VLA_MODEL_PATH": "me/model", "ROSBRIDGE_HOST": "robot", "ROSBRIDGE_PORT": "9191",
           "VLA_INFERENCE_RATE": "5", "VLA_DEVICE": "CPU", "ROSBRIDGE_PROXY": "socks5h://localhost:1055",
           "VLA_TASK_INSTRUCTION": "open the drawer", "PEER_WAIT_TIMEOUT": "12"}
    s = resolve_settings(parse(), env)
    assert (s.rosbridge_host, s.rosbridge_port, s.inference_rate, s.device) == ("robot", 9191, 5.0, "cpu")
    assert s.rosbridge_proxy == "socks5h://localhost:1055" and s.instruction == "open the drawer"
    assert s.peer_wait_timeout == 12.0


def test_flags_override_env() -> None:
    env = {"VLA_MODEL_PATH": "env/model", "ROSBRIDGE_PORT": "1", "VLA_INFERENCE_RATE": "2", "VLA_DEVICE": "cuda"}
    args = parse("--model-path", "flag/model", "--rosbridge-port", "9092", "--inference-rate", "20",
                 "--device", "cpu", "--task-instruction", "stack", "--max-frame-age", "0.25")
    s = resolve_settings(args, env)
    assert (s.model_path, s.rosbridge_port, s.inference_rate, s.device) == ("flag/model", 9092, 20.0, "cpu")
    assert s.instruction == "stack" and s.max_frame_age == 0.25


def test_every_problem_is_reported_together(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"ROSBRIDGE_PORT": "abc", "VLA_INFERENCE_RATE": "-1", "VLA_DEVICE": "tpu",
           "ROSBRIDGE_PROXY": "ftp://x", "VLA_MAX_FRAME_AGE": "nan", "PEER_WAIT_TIMEOUT": "-3"}
    with pytest.raises(SettingsError) as info:
        resolve_settings(parse("--rosbridge-host", "bad host"), env)
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 8, problems
    for needle in ("ROSBRIDGE_PORT='abc'", "VLA_INFERENCE_RATE='-1'", "'tpu'", "VLA_MODEL_PATH",
                   "socks5h://", "VLA_MAX_FRAME_AGE", "PEER_WAIT_TIMEOUT", "bad host"):
        assert needle in problems
    missing = tmp_path / "nope"
    with pytest.raises(SettingsError, match="does not exist"):
        resolve_settings(parse("--model-path", str(missing)), {})


def test_cuda_without_gpu_suggests_cpu() -> None:
    with pytest.raises(SettingsError, match="--device cpu"):
        resolve_settings(parse("--model-path", "m/m"), {}, cuda_available=lambda: False)
    assert resolve_settings(parse("--model-path", "m/m", "--device", "cpu"), {},
                            cuda_available=lambda: False).device == "cpu"


def test_secrets_never_in_repr_or_public_dict() -> None:
    env = {"VLA_MODEL_PATH": "m/m", "HF_TOKEN": "hf_secret123", "ROSBRIDGE_PROXY": "socks5h://user:pw@h:1055"}
    s = resolve_settings(parse(), env)
    assert s.hf_token == "hf_secret123"
    text = repr(s) + str(s.public_dict())
    assert "hf_secret123" not in text and "pw@" not in text
