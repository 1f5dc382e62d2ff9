"""SFT of an OpenVLA-architecture model: small-model builder, the published loss, a resumable training loop.

Design choices:

* The model is the runtime's own :class:`~crane_x7_vla.models.openvla.OpenVLA` (loaded with ``load_vla`` or built
  by :func:`build_small_model`), so what we train is byte-for-byte what inference, the RL trainer and
  ``save_pretrained`` see; no training-only model class.
* Loss = HF's shifted token-mean cross-entropy over the full vocabulary on the published right-padded layout
  (see :mod:`.dataset`); the LM head is applied only at the labelled positions (actions + EOS), which gives the
  same mean as ``CrossEntropyLoss(ignore_index=-100)`` over all positions at a fraction of the cost.
* LoRA uses PEFT (``inject_adapter_in_model``, r 32 / alpha 16 on every Linear but ``lm_head``, the published
  recipe); ``save_pretrained`` folds it into a full checkpoint, so every output is directly loadable.
* Checkpoint = ``OUT/checkpoint_latest``: the OpenVLA checkpoint files + ``sft_state.pt`` (optimizer, scheduler,
  RNG, step, LoRA weights) + ``sft_state.json``, written as ONE atomic directory, so weights and optimizer
  state can never disagree. Batches depend only on (seed, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from crane_x7_vla.models.action_tokenizer import ActionTokenizer
from crane_x7_vla.models.config import DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD, OpenVLAConfig, ViTConfig
from crane_x7_vla.models.loading import load_vla, save_pretrained
from crane_x7_vla.models.normalization import ActionStats
from crane_x7_vla.models.openvla import OpenVLA
from crane_x7_vla.models.tiny import TINY_TEXT_CONFIG, build_llama_style_tokenizer
from crane_x7_vla.utils.atomic import atomic_directory, write_text_atomic
from crane_x7_vla_rl.sft.dataset import (
    DEFAULT_UNNORM_KEY,
    IGNORE_INDEX,
    DemoFrames,
    action_token_ids,
    batch_indices,
    build_example,
    random_shift,
    right_pad,
)
from crane_x7_vla_rl.training.checkpoint import rng_state, set_rng_state

log = logging.getLogger(__name__)

LATEST = "checkpoint_latest"
STATE_PT = "sft_state.pt"
STATE_JSON = "sft_state.json"
METRICS = "metrics.jsonl"


# ------------------------------------------------------------------------------------------------ small model
@dataclass(frozen=True)
class SmallModelSpec:
    """Geometry of a from-scratch OpenVLA-family model (same modules and file layout, smaller dims)."""

    fused: bool  # DINOv2-like + SigLIP-like towers (6-channel input) or one SigLIP-like tower
    patch_size: int  # 14 as published (256 patches at 224 px); 28 -> 64 patches, 4x cheaper on a CPU
    vision_width: int  # token width of each tower
    vision_depth: int  # blocks per tower (features come from block depth-2)
    vision_heads: int
    llm_hidden: int  # Llama width
    llm_layers: int
    llm_heads: int
    llm_intermediate: int  # Llama MLP width
    image_size: int = 224  # the camera frames' size (and the published input size)


SMALL_PRESETS: dict[str, SmallModelSpec] = {
    # ~53M parameters (33M of them the 32064-row embedding + LM head): fused towers at the published patch size.
    "small": SmallModelSpec(fused=True, patch_size=14, vision_width=192, vision_depth=6, vision_heads=3,
                            llm_hidden=512, llm_layers=4, llm_heads=8, llm_intermediate=1376),
    # ~23M parameters (16M embedding + head): one tower, 28 px patches (64 image tokens) so SFT and
    # 100-episode evaluations fit a 2-core CPU.
    "small-cpu": SmallModelSpec(fused=False, patch_size=28, vision_width=192, vision_depth=4, vision_heads=3,
                                llm_hidden=256, llm_layers=4, llm_heads=4, llm_intermediate=688),
}


def small_config_dict(spec: SmallModelSpec, norm_stats: dict[str, Any]) -> dict[str, Any]:
    """An OpenVLA ``config.json`` dict for ``spec`` (towers described by our ``vision_tower_configs`` extension)."""
    w, d, h = spec.vision_width, spec.vision_depth, spec.vision_heads
    dino = ViTConfig(w, d, h, 4 * w, spec.patch_size, spec.image_size, num_reg_tokens=4, class_token=True,
                     layer_scale=True, mean=DINO_MEAN, std=DINO_STD)
    siglip = ViTConfig(w, d, h, 4 * w, spec.patch_size, spec.image_size, attn_pool=True, mean=SIGLIP_MEAN,
                       std=SIGLIP_STD)
    towers = [dino, siglip] if spec.fused else [siglip]
    ids = ["small_vit_reg4_dinov2", "small_vit_siglip"] if spec.fused else ["small_vit_siglip"]
    text = {**TINY_TEXT_CONFIG, "hidden_size": spec.llm_hidden, "num_hidden_layers": spec.llm_layers,
            "num_attention_heads": spec.llm_heads, "num_key_value_heads": spec.llm_heads,
            "intermediate_size": spec.llm_intermediate}
    return {
        "architectures": ["OpenVLAForActionPrediction"],
        "model_type": "openvla",
        "vision_backbone_id": "dinosiglip-vit-so-224px" if spec.fused else "siglip-vit-so400m",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp" if spec.fused else "no-align+gelu-mlp",
        "use_fused_vision_backbone": spec.fused,
        "image_resize_strategy": "resize-naive",
        "timm_model_ids": ids,
        "timm_override_act_layers": [None] * len(ids),
        "image_sizes": [spec.image_size] * len(ids),
        "llm_max_length": 2048,
        "pad_token_id": 32000,
        "pad_to_multiple_of": 64,
        "n_action_bins": 256,
        "norm_stats": norm_stats,
        "text_config": text,
        "vision_tower_configs": [{**dataclasses.asdict(t), "mean": list(t.mean), "std": list(t.std)} for t in towers],
    }


def init_small_weights(model: OpenVLA, seed: int) -> None:
    """A trainable from-scratch init (the tiny test models' init is tuned for random *predictions*, not SGD)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_factor"):
                p.fill_(0.1)  # LayerScale: timm's 1e-5 would keep a from-scratch tower near identity for long
            elif "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            elif p.ndim >= 2 or "pos_embed" in name or "token" in name or "latent" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))  # GPT/ViT-style N(0, 0.02)


def build_small_model(spec: SmallModelSpec, norm_stats: dict[str, Any], unnorm_key: str, seed: int) -> OpenVLA:
    config = OpenVLAConfig.from_dict(small_config_dict(spec, norm_stats))
    model = OpenVLA(config, tokenizer=build_llama_style_tokenizer(), norm_stats=norm_stats, unnorm_key=unnorm_key)
    init_small_weights(model, seed)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ loss
@dataclass
class LossOutput:
    loss: Tensor  # scalar, token-mean CE over labelled positions
    num_tokens: int  # labelled tokens in the batch (actions + EOS)
    action_hits: Tensor  # scalar on the model's device: action tokens whose argmax (full vocabulary) is the label
    num_action_tokens: int

    @property
    def action_accuracy(self) -> float:
        """Fraction of action tokens predicted right (reads ``action_hits``: a host-device sync on CUDA)."""
        return float(self.action_hits) / max(self.num_action_tokens, 1)


def forward_hidden(model: OpenVLA, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Right-padded batch -> last-layer hidden states [B, 1+P+L-1, H] laid out as [BOS, patches, rest]."""
    _check_right_padded(attention_mask)
    return _forward_hidden(model, pixel_values, input_ids, attention_mask)


def _check_right_padded(attention_mask: Tensor) -> None:
    if not bool((attention_mask[:, 0] == 1).all()):
        raise ValueError("training batches are right-padded: every row must start with BOS (attention_mask[:, 0] == 1)")


def _forward_hidden(model: OpenVLA, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    patches = model.projector(model.vision_backbone(pixel_values.to(model.dtype)))  # [B,P,H]
    text = model.language_model.model.embed_tokens(input_ids)  # [B,L,H]
    b, p = patches.shape[0], patches.shape[1]
    embeds = torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)  # [B,T,H], T = L+P
    mask = torch.cat([attention_mask[:, :1], attention_mask.new_ones(b, p), attention_mask[:, 1:]], dim=1)  # [B,T]
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # = 0..n-1 on real tokens, as the runtime's left pad
    return model.llm_hidden(embeds, mask, position_ids)


def multimodal_labels(labels: Tensor, num_patches: int) -> Tensor:
    """labels [B,L] -> [B,L+P] with -100 on the patch slots after BOS."""
    pad = labels.new_full((labels.shape[0], num_patches), IGNORE_INDEX)
    return torch.cat([labels[:, :1], pad, labels[:, 1:]], dim=1)


def sft_loss(model: OpenVLA, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> LossOutput:
    """The published loss of one right-padded batch. ``input_ids``, ``attention_mask`` and ``labels`` may be on the
    CPU (as :func:`right_pad` builds them): they are checked and the labelled positions found there, so on a GPU
    the step never waits for the device (a boolean-mask index or ``.item()`` would stall the host each step)."""
    device = pixel_values.device
    _check_right_padded(attention_mask)
    num_patches = model.config.vision_towers[0].num_patches
    target = multimodal_labels(labels.cpu(), num_patches)[:, 1:]  # [B,T-1]: HF shift, position t predicts t+1
    rows, cols = (target != IGNORE_INDEX).nonzero(as_tuple=True)  # [K] each, on the CPU
    if rows.numel() == 0:
        raise ValueError("the batch has no labelled tokens (every label is -100)")
    gold_cpu = target[rows, cols]  # [K]
    is_action_cpu = gold_cpu >= model.action_tokenizer.first_token_id
    hidden = _forward_hidden(model, pixel_values, input_ids.to(device, non_blocking=True),
                             attention_mask.to(device, non_blocking=True))  # [B,T,H]
    if hidden.shape[1] - 1 != target.shape[1]:
        raise ValueError(f"the model produced {hidden.shape[1]} positions, the labels expect {target.shape[1] + 1}")
    logits = model.language_model.lm_head(hidden[rows.to(device), cols.to(device)]).float()  # [K, V]
    gold = gold_cpu.to(device, non_blocking=True)
    loss = F.cross_entropy(logits, gold)
    with torch.no_grad():
        hits = ((logits.argmax(-1) == gold) & is_action_cpu.to(device, non_blocking=True)).sum()
    return LossOutput(loss, int(rows.numel()), hits, int(is_action_cpu.sum()))


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class SFTConfig:
    demos: str  # demo dataset directory (format v1)
    output: str  # run directory (checkpoint_latest/, metrics.jsonl)
    base: str | None = None  # starting checkpoint (local / Hub / LoRA dir); None with init_small
    init_small: str | None = None  # a SMALL_PRESETS name: build a from-scratch model instead of --base
    mode: str = "full"  # "lora" or "full"
    steps: int = 2000  # total optimizer steps (with resume: the total, not the number still to run)
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # "cosine" (decay to min_lr_ratio * lr at `steps`) or "constant" after warmup
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    lora_rank: int = 32  # published OpenVLA recipe
    lora_alpha: int = 16
    seed: int = 0
    device: str = "auto"  # auto -> cuda when available
    unnorm_key: str = DEFAULT_UNNORM_KEY  # dataset key of the statistics written with the checkpoint
    only_successful: bool = True  # train on successful demos only
    max_episodes: int | None = None
    log_every: int = 10
    save_every: int = 200
    max_seconds: float | None = None  # stop (and checkpoint) after this much wall time; resume continues
    image_shift: int = 8  # random-shift augmentation in px (0: off); see dataset.random_shift
    compile: bool = False  # torch.compile the vision towers and the Llama layers (see compile_for_training)

    def __post_init__(self) -> None:
        if (self.base is None) == (self.init_small is None):
            raise ValueError("give exactly one of --base CKPT or --init-small")
        if self.init_small is not None and self.init_small not in SMALL_PRESETS:
            raise ValueError(f"unknown --init-small preset {self.init_small!r}; choose one of {sorted(SMALL_PRESETS)}")
        if self.mode not in ("lora", "full"):
            raise ValueError(f"mode must be 'lora' or 'full', got {self.mode!r}")
        if not 0 <= self.image_shift < 64:
            raise ValueError(f"--image-shift must be in 0..63 px, got {self.image_shift}")
        for name in ("steps", "batch_size", "log_every", "save_every", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")


def compile_for_training(model: OpenVLA) -> None:
    """``torch.compile`` the vision towers and each Llama decoder layer in place (``nn.Module.compile``: the
    state-dict keys stay the same, so checkpoints are unchanged). A step of the ``small`` preset spends only ~8 of
    ~64 ms in GEMMs on an H200 (docs/performance.md); the rest is likely small elementwise and normalisation
    kernels, which the compiler fuses. The first steps pay for the compilation."""
    model.vision_backbone.compile()
    for layer in model.language_model.model.layers:
        layer.compile()


def resized_frames(model: OpenVLA, images: NDArray[np.uint8], device: torch.device) -> Tensor:
    """All demo frames resized to the towers' input size ONCE (the runtime's PIL resize, so training sees the
    pixels inference sees) and moved to ``device`` as uint8 [N,S,S,3]: per step only indexing, the shift and the
    normalisation run, on the device (the per-frame PIL path capped a GPU at CPU speed)."""
    size = model.image_transform.shared_size()
    if size is None:
        raise ValueError("sft needs vision towers that share one input size (every published OpenVLA does)")
    if model.image_transform.strategy != "resize-naive" and images.shape[1] != images.shape[2]:
        raise ValueError("sft resizes frames once for all towers: record square frames or use resize-naive")
    if images.shape[1:] != (size, size, 3):
        images = np.stack([model.image_transform.resized(im)[0] for im in images])
    return torch.from_numpy(np.ascontiguousarray(images)).to(device)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
    return dev


# ------------------------------------------------------------------------------------------------ model setup
def _set_stats(model: OpenVLA, stats: dict[str, Any], key: str) -> None:
    # The fine-tuned model predicts the demo dataset only: its stats become the config's and the file's, so the
    # checkpoint is unambiguous (load_vla needs no unnorm_key).
    model.config = dataclasses.replace(model.config, norm_stats=stats)
    model.norm_stats = dict(stats)
    model.unnorm_key = key


def _inject_lora(model: OpenVLA, rank: int, alpha: int) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                                       bias="none"), model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)


def _lora_state(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if "lora_" in n}


def build_model(cfg: SFTConfig, stats: dict[str, Any], device: torch.device, resume_dir: Path | None) -> OpenVLA:
    """The model to train, on ``device`` in fp32 (master weights; CUDA runs bf16 autocast)."""
    model: OpenVLA
    if resume_dir is not None and cfg.mode == "full":
        model = load_vla(resume_dir, device=device, dtype=torch.float32)  # the latest full weights
    elif cfg.init_small is not None:
        model = build_small_model(SMALL_PRESETS[cfg.init_small], stats, cfg.unnorm_key, cfg.seed).to(device)
    else:
        assert cfg.base is not None
        model = load_vla(cfg.base, device=device, dtype=torch.float32, unnorm_key=_any_key(cfg.base))
    _set_stats(model, stats, cfg.unnorm_key)
    if cfg.mode == "lora":
        _inject_lora(model, cfg.lora_rank, cfg.lora_alpha)
        model.to(device)
    return model.train()


def _any_key(base: str) -> str | None:
    # load_vla insists on a key when a base has stats for several datasets; any works, they are replaced.
    from crane_x7_vla.models.loading import CONFIG_NAME, STATS_NAME, resolve_checkpoint

    try:
        root = resolve_checkpoint(base)
        stats = dict(json.loads((root / CONFIG_NAME).read_text()).get("norm_stats") or {})
        if (root / STATS_NAME).is_file():
            stats.update(json.loads((root / STATS_NAME).read_text()))
        return sorted(stats)[0] if stats else None
    except (OSError, ValueError):
        return None  # let load_vla report the real problem


# ------------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(
    model: OpenVLA, out_dir: Path, step: int, cfg: SFTConfig, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Path:
    """Write ``out_dir/checkpoint_latest`` (loadable checkpoint + resume state) as one atomic directory."""
    target = out_dir / LATEST
    with atomic_directory(target) as tmp:
        weights = save_pretrained(model, tmp / "weights")  # LoRA layers are folded in: a plain full checkpoint
        for f in weights.iterdir():
            os.replace(f, tmp / f.name)
        weights.rmdir()
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng_state(), "lora": _lora_state(model) if cfg.mode == "lora" else None}
        torch.save(state, tmp / STATE_PT)
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, "config": dataclasses.asdict(cfg)}, indent=2) + "\n")
    return target


def read_state_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / LATEST / STATE_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --resume takes the --output directory of an earlier sft run")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def resume_config(run_dir: Path, max_seconds: float | None = None, **overrides: Any) -> SFTConfig:
    """The saved run's config with ``overrides`` (e.g. steps, device; None = keep) applied.

    ``max_seconds`` is a limit of one invocation, never inherited from the saved run.
    """
    saved = read_state_json(run_dir)["config"]
    saved.update({k: v for k, v in overrides.items() if v is not None})
    saved["max_seconds"] = max_seconds
    return SFTConfig(**saved)


# ------------------------------------------------------------------------------------------------ loop
def lr_factor(step: int, cfg: SFTConfig) -> float:
    """Linear warmup, then constant or a cosine decay to ``min_lr_ratio`` at ``cfg.steps`` (a function of the step
    only, so a resumed run follows the same curve; resuming with a larger --steps stretches the rest of it)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    frac = min(1.0, (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if int(r.get("step", 0)) <= upto]


def train(cfg: SFTConfig, resume: bool = False, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) SFT until ``cfg.steps`` or ``cfg.max_seconds``; returns a JSON-able summary."""
    started = time.perf_counter()
    out_dir = Path(cfg.output)
    device = resolve_device(cfg.device)
    frames = DemoFrames.load(cfg.demos, cfg.only_successful, cfg.max_episodes)
    stats = frames.statistics(cfg.unnorm_key)
    resume_dir = out_dir / LATEST if resume else None
    if resume_dir is not None and not (resume_dir / STATE_PT).is_file():
        raise FileNotFoundError(f"{resume_dir / STATE_PT} not found: nothing to resume in {out_dir}")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, stats, device, resume_dir)
    if cfg.compile:
        compile_for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel per step for all parameters on CUDA (the foreach default launches several per group)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, cfg))
    step = 0
    if resume_dir is not None:
        state = torch.load(resume_dir / STATE_PT, map_location=device, weights_only=False)
        if cfg.mode == "lora":
            missing = model.load_state_dict({k: v.to(device) for k, v in state["lora"].items()}, strict=False)
            if missing.unexpected_keys:
                raise ValueError(f"{resume_dir}: LoRA state does not fit the base model ({missing.unexpected_keys[:2]})")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = int(state["step"])
    metrics = _read_metrics(out_dir / METRICS, step)

    # Per-frame targets and per-instruction prompts are computed once.
    action_stats = ActionStats.from_stats(stats[cfg.unnorm_key], cfg.unnorm_key)
    tokens = action_token_ids(frames.actions, action_stats, ActionTokenizer(model.config.vocab_size_without_pad,
                                                                           model.config.n_action_bins))  # (N, D)
    prompts = {t: model.prompt_ids(t) for t in set(frames.instructions)}  # the prompts inference builds
    eos = int(model.tokenizer.eos_token_id)
    pixels = resized_frames(model, frames.images, device)  # [N,S,S,3] uint8, resized once, kept on the device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    n_params = count_parameters(model)
    n_train = sum(p.numel() for p in params)
    log.info("sft: %d frames from %d episodes, %s model (%d params, %d trainable), step %d -> %d on %s",
             len(frames), frames.num_episodes, cfg.init_small or cfg.base, n_params, n_train, step, cfg.steps, device)
    # The loss and grad norm stay on the device between log steps (reading them each step would make the host
    # wait for the GPU before it can queue the next step's kernels).
    window: list[Tensor] = []
    last_loss = math.nan
    t_window = time.perf_counter()
    stopped_early = False
    while step < cfg.steps:
        idx = batch_indices(cfg.seed, step, len(frames), cfg.batch_size)
        batch_pixels = random_shift(pixels[torch.from_numpy(idx).to(device)], cfg.image_shift, cfg.seed, step)
        pixel_values = model.image_transform.normalize([batch_pixels])  # [B,3T,H,W] float32
        input_ids, attention_mask, labels = right_pad(
            [build_example(prompts[frames.instructions[i]], tokens[i].tolist(), eos) for i in idx], model.config.pad_token_id)
        with autocast:
            out = sft_loss(model, pixel_values, input_ids, attention_mask, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        window.append(out.loss.detach())
        if step % cfg.log_every == 0 or step == cfg.steps:
            losses = torch.stack(window).float().cpu()
            last_loss = float(losses[-1])
            now = time.perf_counter()
            row = {"step": step, "loss": float(losses.mean()), "action_accuracy": out.action_accuracy,
                   "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": len(window) * cfg.batch_size / max(now - t_window, 1e-9),
                   "elapsed_s": now - started}
            metrics.append(row)
            write_text_atomic(out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in metrics))
            log.info("step %d/%d loss %.4f acc %.3f (%.1f samples/s)", step, cfg.steps, row["loss"],
                     row["action_accuracy"], row["samples_per_s"])
            if progress is not None:
                progress(row)
            window, t_window = [], now
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - started > cfg.max_seconds
        if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
            save_checkpoint(model, out_dir, step, cfg, optimizer, scheduler)
        if out_of_time and step < cfg.steps:
            stopped_early = True
            break
    if window:  # stopped between log steps
        last_loss = float(window[-1])
    if step >= cfg.steps and not (out_dir / LATEST / STATE_PT).is_file():
        save_checkpoint(model, out_dir, step, cfg, optimizer, scheduler)  # e.g. resumed at an already-done step
    return {"checkpoint": str(out_dir / LATEST), "step": step, "steps": cfg.steps, "done": not stopped_early,
            "loss": last_loss, "frames": len(frames), "episodes": frames.num_episodes, "parameters": n_params,
            "trainable_parameters": n_train, "seconds": round(time.perf_counter() - started, 2)}

