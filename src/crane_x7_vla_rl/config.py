"""The VLA-RL training configuration: one frozen pydantic schema of the YAML file.

Design: every key and default of the documented YAML is a field here (plus the keys this implementation adds,
marked "added"). Unknown keys are an error that names the key and suggests the closest valid one, because a
typo in a YAML file silently falling back to a default is the most expensive kind of RL bug.

Precedence when resolving a run's config (highest first): command-line flags > environment variables
(``LIFT_SIMULATOR``, ``LIFT_BACKEND``, ``WANDB_PROJECT``) > the ``--config`` YAML > these defaults.
Secrets (``HF_TOKEN``, ``WANDB_API_KEY``) are read from the environment at use time and never stored here.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TemplateName = Literal["default", "fast", "full"]


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the key and the fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RolloutConfig(_Frozen):
    simulator: str = "maniskill"  # Lift backend: maniskill / genesis / mujoco / isaacsim (env LIFT_SIMULATOR)
    env_id: str = "PickPlace-CRANE-X7"  # task id registered in crane_x7_vla.lift
    backend: Literal["cpu", "gpu"] = "cpu"  # simulation backend (env LIFT_BACKEND)
    render_mode: str = "rgb_array"  # "rgb_array" (offscreen) or "human" (a viewer window; --render)
    num_parallel_envs: int = Field(default=4, ge=1)  # envs stepped as one batch; the policy runs batched over them
    num_rollouts_per_update: int = Field(default=8, ge=1)  # episodes per update (rounded up to a multiple of envs)
    max_steps: int = Field(default=100, ge=1)  # episode horizon (the simulator's max_episode_steps)
    use_binary_reward: bool = True  # 1 on success else 0; false selects the staged reward
    reward_mode: Literal["binary", "staged", "dense"] | None = None  # added: overrides use_binary_reward
    # added: staged/dense rewards are paid as potential-based shaping, gamma * r_t - r_{t-1} (success ends the
    # episode with its reward), so success beats lingering in any stage (rollout/collector.py says why)
    progress_reward: bool = True
    temperature: float = Field(default=1.0, gt=0.0)  # sampling temperature; log-probs are recomputed at the same T
    camera: Literal["wrist", "third_person"] = "wrist"  # added: camera the policy sees
    image_size: tuple[int, int] = (224, 224)  # added: rendered (height, width) before the VLA's own resize
    robot_init_qpos_noise: float = Field(default=0.02, ge=0.0)  # added: rest-pose noise at reset (rad)
    sim_workers: int = Field(default=0, ge=0)  # added: >1 steps the envs in that many processes (CPU backends)
    # added: act (rollouts, evaluation) through the static-cache CUDA-graph engine with the LoRA deltas merged
    # into its own weight copy; auto = on for OpenVLA on CUDA (several times faster sampling, ~12 GiB more for 7B)
    engine: Literal["auto", "on", "off"] = "auto"

    @field_validator("engine", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean; `engine: on` means the word.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @property
    def effective_reward_mode(self) -> Literal["binary", "staged", "dense"]:
        if self.reward_mode is not None:
            return self.reward_mode
        return "binary" if self.use_binary_reward else "staged"


class PPOConfig(_Frozen):
    algorithm: Literal["ppo", "grpo"] = "ppo"  # added: grpo = group-relative advantages, no critic
    learning_rate: float = Field(default=1.0e-5, gt=0.0)  # AdamW lr of the LoRA parameters
    value_learning_rate: float | None = None  # added: lr of the value head (None = 10x learning_rate)
    gamma: float = Field(default=0.99, ge=0.0, le=1.0)  # discount
    gae_lambda: float = Field(default=0.95, ge=0.0, le=1.0)  # GAE lambda
    clip_ratio: float = Field(default=0.2, gt=0.0)  # PPO epsilon of the clipped surrogate
    value_loss_coef: float = Field(default=0.5, ge=0.0)  # weight of the value loss
    entropy_coef: float = Field(default=0.01, ge=0.0)  # weight of the entropy bonus (sum over action tokens)
    num_epochs: int = Field(default=4, ge=1)  # passes over the update's data
    minibatch_size: int = Field(default=32, ge=1)  # transitions per optimizer step (split into micro-batches)
    grad_accumulation_steps: int = Field(default=1, ge=1)  # added: micro-batches per minibatch (memory knob)
    max_grad_norm: float = Field(default=0.5, gt=0.0)  # global grad-norm clip
    target_kl: float | None = Field(default=0.02, gt=0.0)  # stop the update's epochs once approx-KL exceeds this
    clip_value_loss: bool = True  # PPO2-style clipped value loss
    value_clip_range: float = Field(default=0.2, gt=0.0)  # clip range of the value prediction around the old one
    normalize_advantages: bool = True  # added: per-minibatch advantage normalisation
    grpo_group_size: int = Field(default=2, ge=2)  # added: GRPO episodes sharing one initial state (divides envs)
    lr_schedule: Literal["constant", "linear"] = "constant"  # added: linear decays to 0 over num_updates
    # added: re-score the rollout's tokens with the learner's own forward before the update, so the first PPO
    # ratio is exactly 1 even when the rollout sampled through the engine (bf16 merged-weight numerics differ
    # from the LoRA forward: measured max |ratio - 1| = 0.27 on an H200, enough for the KL stop after one
    # epoch); one extra no-grad forward over the update's transitions
    recompute_log_probs: bool = True


class DistributedConfig(_Frozen):
    """Added: multi-process training under ``torchrun`` / ``accelerate launch`` (ignored in a single process)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # ddp: replicate, sync LoRA + value-head grads; fsdp: shard (CUDA only)
    timeout_minutes: float = Field(default=60.0, gt=0.0)  # collective timeout (ranks wait while rank 0 evaluates)


class TrainConfig(_Frozen):
    experiment_name: str = "crane_x7_vla_rl"  # run name: <output_dir>/<experiment_name>/
    output_dir: str = "outputs"  # added: output root (--output-dir)
    seed: int = 42  # seeds torch, numpy and the simulators
    device: str = "cuda"  # torch device; falls back to cpu with a warning when CUDA is absent
    pretrained_checkpoint: str = "openvla/openvla-7b"  # Hub id, local dir or LoRA adapter dir
    sft_checkpoint: str | None = None  # SFT checkpoint; used instead of pretrained_checkpoint when set
    unnorm_key: str | None = None  # added: dataset key of the action statistics (None = the only one)
    lora_rank: int = Field(default=32, ge=1)  # LoRA r
    lora_alpha: int = Field(default=16, ge=1)  # LoRA alpha (scale alpha / r)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # added: LoRA dropout (0 keeps PPO ratios exact)
    value_head_hidden: int = Field(default=512, ge=1)  # added: hidden width of the value MLP
    bf16: bool = True  # added: bf16 autocast on CUDA (ignored on CPU, where fp32 keeps resume exact)
    num_updates: int = Field(default=1000, ge=1)  # PPO updates
    language_instruction: str = "pick up the object and place it"  # instruction given to every env
    use_wandb: bool = False  # log to Weights & Biases (WANDB_MODE=offline works; WANDB_DIR honoured)
    wandb_project: str = "crane-x7-vla-rl"  # W&B project (env WANDB_PROJECT)
    wandb_entity: str | None = None  # added: W&B entity (env WANDB_ENTITY)
    use_tensorboard: bool = True  # added: TensorBoard event files under the run dir
    log_interval: int = Field(default=10, ge=1)  # updates between console metric lines
    eval_interval: int = Field(default=50, ge=1)  # updates between evaluations (drive checkpoint_best)
    save_interval: int = Field(default=100, ge=1)  # updates between checkpoint_<N> snapshots
    num_eval_episodes: int = Field(default=10, ge=1)  # episodes per evaluation
    eval_seed: int = 10_000  # added: first seed of the fixed evaluation episodes
    stop_success_rate: float | None = Field(default=None, gt=0.0, le=1.0)  # added: stop once eval reaches it
    eval_temperature: float = Field(default=0.0, ge=0.0)  # added: 0 = greedy actions when evaluating
    save_eval_videos: bool = True  # added: mp4 per eval episode, named by outcome
    max_eval_videos: int = Field(default=4, ge=0)  # added: at most this many videos per evaluation
    video_camera: Literal["wrist", "third_person"] = "third_person"  # added: camera of the eval videos
    render: bool = False  # added: live visualisation (--render)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)  # added: torchrun

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.ppo.algorithm == "grpo" and self.rollout.num_parallel_envs % self.ppo.grpo_group_size:
            raise ValueError(
                f"ppo.grpo_group_size={self.ppo.grpo_group_size} must divide "
                f"rollout.num_parallel_envs={self.rollout.num_parallel_envs}"
            )
        return self

    @property
    def checkpoint_source(self) -> str:
        """The checkpoint the policy starts from (SFT wins over pretrained)."""
        return self.sft_checkpoint or self.pretrained_checkpoint

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- templates -----------------------------------------------------------------------------------------------
TEMPLATES: dict[str, dict[str, Any]] = {
    "fast": {"num_updates": 100, "eval_interval": 20, "save_interval": 50, "num_eval_episodes": 4,
             "rollout": {"num_parallel_envs": 2, "num_rollouts_per_update": 2, "max_steps": 50}},
    "default": {},
    "full": {"num_updates": 5000, "save_interval": 250, "num_eval_episodes": 20,
             "rollout": {"num_parallel_envs": 8, "num_rollouts_per_update": 16}},
}


def template(name: str) -> TrainConfig:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TrainConfig.model_validate(TEMPLATES[name])


# --- loading ---------------------------------------------------------------------------------------------------
def _check_keys(data: Mapping[str, Any], model: type[BaseModel], where: str) -> None:
    """Raise ConfigError naming the first unknown key (with a suggestion), recursing into sections."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    fields = model.model_fields
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" Did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}.{hint} Valid keys here: {', '.join(fields)}")
        sub = fields[key].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and value is not None:
            _check_keys(value, sub, path)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def validate(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Validate a nested dict; errors name the offending key and the problem."""
    _check_keys(data, TrainConfig, "")
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(config)"
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines)) from None


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; write one with "
                          f"`python -m crane_x7_vla_rl.training.cli config -o {p}`")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys, got {type(data).__name__}")
    _check_keys(data, TrainConfig, "")
    return data


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The config values the environment sets (LIFT_SIMULATOR, LIFT_BACKEND, WANDB_PROJECT, WANDB_ENTITY)."""
    out: dict[str, Any] = {}
    rollout: dict[str, Any] = {}
    if environ.get("LIFT_SIMULATOR"):
        rollout["simulator"] = environ["LIFT_SIMULATOR"]
    if environ.get("LIFT_BACKEND"):
        rollout["backend"] = environ["LIFT_BACKEND"]
    if rollout:
        out["rollout"] = rollout
    if environ.get("WANDB_PROJECT"):
        out["wandb_project"] = environ["WANDB_PROJECT"]
    if environ.get("WANDB_ENTITY"):
        out["wandb_entity"] = environ["WANDB_ENTITY"]
    return out


# CLI flag (argparse dest) -> dotted config key.
FLAG_KEYS: dict[str, str] = {
    "sft_checkpoint": "sft_checkpoint",
    "pretrained": "pretrained_checkpoint",
    "experiment_name": "experiment_name",
    "output_dir": "output_dir",
    "seed": "seed",
    "simulator": "rollout.simulator",
    "env_id": "rollout.env_id",
    "backend": "rollout.backend",
    "num_parallel_envs": "rollout.num_parallel_envs",
    "num_updates": "num_updates",
    "num_rollouts": "rollout.num_rollouts_per_update",
    "learning_rate": "ppo.learning_rate",
    "num_epochs": "ppo.num_epochs",
    "instruction": "language_instruction",
    "wandb_project": "wandb_project",
    "camera": "rollout.camera",
    "sim_workers": "rollout.sim_workers",
    "engine": "rollout.engine",
}
# store_true flags: only an explicit True overrides (absent means "not given").
BOOL_FLAG_KEYS: dict[str, str] = {"use_wandb": "use_wandb", "render": "render"}


def flag_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dest, key in [*FLAG_KEYS.items(), *BOOL_FLAG_KEYS.items()]:
        value = flags.get(dest)
        if value is None or (dest in BOOL_FLAG_KEYS and value is False):
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if flags.get("render"):
        out.setdefault("rollout", {})["render_mode"] = "human"
    if flags.get("pretrained") is not None:
        out["sft_checkpoint"] = None  # an explicit --pretrained wins over a YAML sft_checkpoint
    return out


def resolve(
    yaml_path: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Resolve the run config: flags > environment > YAML (or ``base``) > defaults."""
    data: dict[str, Any] = dict(base or {})
    if yaml_path is not None:
        data = _merge(data, load_yaml(yaml_path))
    data = _merge(data, env_overrides(os.environ if environ is None else environ))
    data = _merge(data, flag_overrides(flags or {}))
    return validate(data, source=str(yaml_path) if yaml_path else "config")
