"""GPU memory plan of one VLA-RL run: will this config fit on this GPU, and if not, which knob to turn.

Design: pure arithmetic over the architecture's numbers (:class:`ModelDims`, read from an ``OpenVLAConfig``) and
the run's size (:class:`MemoryConfig`), no torch and no device queries, so it is exact to test and cheap to call
before anything is allocated. :func:`check_fits` raises :class:`MemoryPlanError` (a ``ValueError``) whose message
names the knob and the value that would fit, instead of a CUDA OOM trace twenty minutes into a run.

The peak is ``persistent + max(rollout phase, update phase)``:

- persistent: frozen weights (bf16), LoRA parameters with their gradients and AdamW moments, the value head,
  the rollout buffers of one update (uint8 frames + per-step scalars, all segments, kept on the device until
  the update ends), the simulator's GPU memory and the CUDA context;
- with the rollout engine (``rollout.engine``, OpenVLA on CUDA), also persistent: its own LLM weights with the
  LoRA deltas merged in, its static KV cache for ``num_parallel_envs`` rows and the CUDA graph's memory pool
  (one prefill's transients), since a captured graph keeps its buffers between rollouts;
- rollout phase (no grad): the KV cache of one batched policy call over ``num_parallel_envs`` envs plus the
  largest transient of a prefill layer and the preprocessed pixels;
- update phase: saved activations of one micro-batch (``ceil(minibatch_size / grad_accumulation_steps)``
  samples) plus a backward working set of two layers' activations, or the one-off gather copy of the
  buffered frames that the update makes before it starts, whichever is larger.

Activation bytes per token per layer (``a`` bytes per element, ``h`` hidden, ``I`` MLP width, ``r`` LoRA rank)
count what autograd saves with frozen base weights and LoRA on every linear (a frozen ``W`` saves nothing; the
LoRA A matrix saves its input, shared with the base layer):

- Llama layer: ``a * (7h + 4I + 7r) + 8h``: norm outputs feeding q/k/v and gate/up, q/k/v and the output kept
  by fused SDPA (no T x T scores), the re-laid-out attention output feeding ``o_proj``, gate, up, silu(gate)
  and their product feeding ``down``; ``8h`` are the two RMSNorms' float32 copies.
- ViT block: ``a * (10d + 2m + 4r)``: two LayerNorm inputs and outputs, q/k/v, SDPA output, the LayerScale
  input, fc1 output and GELU output, fc2 output.

With activation checkpointing (transformers' ``gradient_checkpointing_enable`` on the LLM only) a Llama layer
keeps only its input (``a * h``) and one layer is recomputed at a time; the vision towers are not checkpointed.
The simulator numbers are documented constants (see ``SIM_GPU_BYTES``), to be replaced by measurements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from crane_x7_vla.models.config import ENGINE_TEXT_BUCKET

GIB = 1024**3
MIB = 1024**2

# Simulator GPU memory, (fixed, per env) bytes, for backends that simulate/render on the GPU. ManiSkill3
# physx_cuda: PhysX preallocates its GPU buffers (contact pairs, patches, ...) from SAPIEN's default
# GpuMemoryConfig and the Vulkan renderer holds a context, shaders and textures: ~1.5 GiB fixed; each env adds its
# scene copy and the render targets of its cameras at 224x224 (colour, depth, segmentation): ~48 MiB. Genesis is
# of the same order. These are conservative estimates (the PhysX/Vulkan allocations are invisible to torch's
# allocator), not measurements: bench/rl_throughput.py reports the device-wide use to replace them.
SIM_GPU_BYTES: dict[str, tuple[int, int]] = {
    "maniskill": (3 * GIB // 2, 48 * MIB),
    "genesis": (3 * GIB // 2, 48 * MIB),
}
CUDA_CONTEXT_BYTES = 1 * GIB  # CUDA context, cuBLAS/cuDNN workspaces and kernels (outside torch's allocator)
DEFAULT_HEADROOM = 0.10  # allocator fragmentation: plan to use at most 90% of the device

ACTION_BINS = 256


class _ViT(Protocol):
    embed_dim: int
    depth: int
    mlp_dim: int
    patch_size: int
    image_size: int
    num_reg_tokens: int
    class_token: bool
    layer_scale: bool
    attn_pool: bool


class MemoryPlanError(ValueError):
    """The config cannot fit on the device; the message names the knob to turn and a value that fits."""


@dataclass(frozen=True)
class TowerDims:
    """One ViT tower: width, blocks, MLP width, patch geometry and which optional parts hold weights."""

    embed_dim: int
    depth: int
    mlp_dim: int
    patch_size: int
    num_patches: int
    num_prefix_tokens: int
    layer_scale: bool = False
    attn_pool: bool = False

    @classmethod
    def from_vit(cls, vit: _ViT) -> TowerDims:
        return cls(vit.embed_dim, vit.depth, vit.mlp_dim, vit.patch_size, (vit.image_size // vit.patch_size) ** 2,
                   int(vit.class_token) + vit.num_reg_tokens, vit.layer_scale, vit.attn_pool)

    @property
    def tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def blocks_run(self) -> int:
        return self.depth - 1  # OpenVLA reads block depth-2: the last block never runs

    def block_linear_shapes(self) -> list[tuple[int, int]]:
        d, m = self.embed_dim, self.mlp_dim
        return [(d, 3 * d), (d, d), (d, m), (m, d)]  # qkv, proj, fc1, fc2

    def pool_linear_shapes(self) -> list[tuple[int, int]]:
        d, m = self.embed_dim, self.mlp_dim
        return [(d, d), (d, 2 * d), (d, d), (d, m), (m, d)] if self.attn_pool else []

    def params(self) -> int:
        d = self.embed_dim
        block = sum(i * o + o for i, o in self.block_linear_shapes()) + 4 * d + (2 * d if self.layer_scale else 0)
        pool = sum(i * o + o for i, o in self.pool_linear_shapes()) + (3 * d if self.attn_pool else 0)
        embed = 3 * self.patch_size**2 * d + d + (self.num_prefix_tokens + self.num_patches) * d
        return embed + self.depth * block + 2 * d + pool


@dataclass(frozen=True)
class ModelDims:
    """The architecture numbers the plan needs (an OpenVLA: ViT tower(s) + MLP projector + Llama)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    towers: tuple[TowerDims, ...]
    fused_projector: bool = True
    lm_head_bias: bool = False

    @classmethod
    def from_openvla_config(cls, config: Any) -> ModelDims:
        """From an ``OpenVLAConfig`` (``OpenVLAConfig.from_dict(OPENVLA_7B)`` or a loaded model's ``.config``)."""
        t: Mapping[str, Any] = config.text_config
        heads = int(t["num_attention_heads"])
        return cls(
            hidden_size=int(t["hidden_size"]), intermediate_size=int(t["intermediate_size"]),
            num_layers=int(t["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(t.get("num_key_value_heads") or heads), vocab_size=int(t["vocab_size"]),
            towers=tuple(TowerDims.from_vit(v) for v in config.vision_towers),
            fused_projector=bool(config.use_fused_vision_backbone),
        )

    # --- shapes ------------------------------------------------------------------------------------------
    @property
    def kv_dim(self) -> int:
        return self.hidden_size // self.num_heads * self.num_kv_heads

    @property
    def num_patches(self) -> int:
        return self.towers[0].num_patches

    def layer_linear_shapes(self) -> list[tuple[int, int]]:
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down

    def projector_linear_shapes(self) -> list[tuple[int, int]]:
        dv, h = sum(t.embed_dim for t in self.towers), self.hidden_size
        return [(dv, 4 * dv), (4 * dv, h), (h, h)] if self.fused_projector else [(dv, h), (h, h)]

    # --- parameter counts --------------------------------------------------------------------------------
    def llm_params(self) -> int:
        h = self.hidden_size
        layer = sum(i * o for i, o in self.layer_linear_shapes()) + 2 * h
        head = self.vocab_size * h + (self.vocab_size if self.lm_head_bias else 0)
        return self.vocab_size * h + self.num_layers * layer + h + head

    def vision_params(self) -> int:
        return sum(t.params() for t in self.towers)

    def projector_params(self) -> int:
        return sum(i * o + o for i, o in self.projector_linear_shapes())

    def total_params(self) -> int:
        return self.llm_params() + self.vision_params() + self.projector_params()

    def lora_params(self, rank: int) -> int:
        """LoRA A and B of every nn.Linear except lm_head (the towers' never-run last block and pool included)."""
        shapes = [s for _ in range(self.num_layers) for s in self.layer_linear_shapes()]
        for t in self.towers:
            shapes += [s for _ in range(t.depth) for s in t.block_linear_shapes()] + t.pool_linear_shapes()
        shapes += self.projector_linear_shapes()
        return rank * sum(i + o for i, o in shapes)

    # --- FLOPs (model FLOPs: 2 x weights x tokens per matmul; attention scores and recompute excluded) -----
    def vision_forward_flops(self) -> int:
        """One image through the towers' run blocks and the projector."""
        towers = sum(2 * t.tokens * t.blocks_run * sum(i * o for i, o in t.block_linear_shapes())
                     for t in self.towers)
        return towers + 2 * self.num_patches * sum(i * o for i, o in self.projector_linear_shapes())

    def llm_forward_flops(self, tokens: int, head_positions: int) -> int:
        """``tokens`` through the Llama layers + the 256-bin LM-head slice at ``head_positions`` positions."""
        layer = sum(i * o for i, o in self.layer_linear_shapes())
        return 2 * tokens * self.num_layers * layer + 2 * head_positions * ACTION_BINS * self.hidden_size

    # --- activations -------------------------------------------------------------------------------------
    def llm_layer_act_bytes(self, act_bytes: int, lora_rank: int) -> int:
        """Saved activations of one Llama layer per token (see the module docstring)."""
        h, i = self.hidden_size, self.intermediate_size
        return act_bytes * (7 * h + 4 * i + 7 * lora_rank) + 8 * h

    def vision_act_bytes_per_image(self, act_bytes: int, lora_rank: int) -> int:
        per = 0
        for t in self.towers:
            d, m = t.embed_dim, t.mlp_dim
            per += t.tokens * t.blocks_run * act_bytes * (10 * d + 2 * m + 4 * lora_rank)
        proj = sum(o for _, o in self.projector_linear_shapes()) * 2  # each output and its GELU
        return per + self.num_patches * act_bytes * proj


@dataclass(frozen=True)
class MemoryConfig:
    """What one run allocates. Field names follow the training YAML where one exists."""

    model: ModelDims
    num_parallel_envs: int = 4  # rollout.num_parallel_envs: envs per batched policy call
    max_steps: int = 100  # rollout.max_steps: buffered steps per segment
    num_rollouts_per_update: int = 8  # rollout.num_rollouts_per_update (segments = ceil(this / envs))
    image_size: tuple[int, int] = (224, 224)  # rollout.image_size: buffered uint8 frames (H, W)
    minibatch_size: int = 32  # ppo.minibatch_size
    grad_accumulation_steps: int = 1  # ppo.grad_accumulation_steps
    activation_checkpointing: bool = False  # recompute Llama layers in backward (VLAActorCritic option)
    lora_rank: int = 32  # lora_rank
    value_head_hidden: int = 512  # value_head_hidden
    prompt_tokens: int = 32  # BOS + prompt + "▁" tokens (Llama tokenizer; ~25 for a short instruction)
    action_dim: int = 8  # action tokens per step
    weight_bytes: int = 2  # frozen weights: bf16
    act_bytes: int = 2  # activations: bf16 autocast
    lora_param_bytes: int = 4  # LoRA parameter dtype (grads and AdamW moments share it)
    simulator: str = "maniskill"  # rollout.simulator; "none" = synthetic frames
    sim_on_gpu: bool = True  # rollout.backend == "gpu"
    rollout_engine: bool = False  # rollout.engine resolved: act through OpenVLAEngine (merged-weight copy, graph)
    headroom: float = DEFAULT_HEADROOM  # fraction of the device kept free for fragmentation

    def __post_init__(self) -> None:
        for name in ("num_parallel_envs", "max_steps", "num_rollouts_per_update", "minibatch_size",
                     "grad_accumulation_steps", "lora_rank", "prompt_tokens", "action_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MemoryConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.headroom < 1.0:
            raise ValueError(f"MemoryConfig.headroom must be in [0, 1), got {self.headroom}")

    @classmethod
    def from_train_config(cls, config: Any, model: ModelDims, **overrides: Any) -> MemoryConfig:
        """From a ``crane_x7_vla_rl.config.TrainConfig`` (duck-typed, so this module needs no pydantic)."""
        r, p = config.rollout, config.ppo
        on_gpu = str(config.device).startswith("cuda")
        dtype_bytes = 2 if on_gpu and config.bf16 else 4
        kw: dict[str, Any] = dict(
            model=model, num_parallel_envs=r.num_parallel_envs, max_steps=r.max_steps,
            num_rollouts_per_update=r.num_rollouts_per_update, image_size=tuple(r.image_size),
            minibatch_size=p.minibatch_size, grad_accumulation_steps=p.grad_accumulation_steps,
            lora_rank=config.lora_rank, value_head_hidden=config.value_head_hidden,
            weight_bytes=dtype_bytes, act_bytes=dtype_bytes, simulator=r.simulator, sim_on_gpu=r.backend == "gpu",
        )
        kw.update(overrides)
        return cls(**kw)

    @property
    def micro_batch(self) -> int:
        return math.ceil(self.minibatch_size / self.grad_accumulation_steps)

    @property
    def segments(self) -> int:
        return max(1, math.ceil(self.num_rollouts_per_update / self.num_parallel_envs))

    @property
    def seq_tokens(self) -> int:
        """Tokens of one teacher-forced update sample: patches + prompt + the first D-1 action tokens."""
        return self.model.num_patches + self.prompt_tokens + self.action_dim - 1


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per component; ``peak`` is what the device must hold at once, ``usable`` what it offers."""

    config: MemoryConfig = field(repr=False)
    weights: int
    lora_and_optimizer: int
    value_head: int
    rollout_buffers: int
    simulator: int
    cuda_context: int
    engine: int
    rollout_inference: int
    update_activations: int
    activations_per_sample: int
    usable: int

    @property
    def persistent(self) -> int:
        return (self.weights + self.lora_and_optimizer + self.value_head + self.rollout_buffers + self.simulator
                + self.cuda_context + self.engine)

    @property
    def peak(self) -> int:
        return self.persistent + max(self.rollout_inference, self.update_activations)

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable

    def breakdown_gib(self) -> dict[str, float]:
        names = ("weights", "lora_and_optimizer", "value_head", "rollout_buffers", "simulator", "cuda_context",
                 "engine", "rollout_inference", "update_activations", "activations_per_sample", "peak", "usable")
        return {n: round(getattr(self, n) / GIB, 3) for n in names}

    def summary(self) -> str:
        b = self.breakdown_gib()
        return (f"peak {b['peak']:.1f} GiB of {b['usable']:.1f} usable: weights {b['weights']:.1f}, "
                f"LoRA+AdamW {b['lora_and_optimizer']:.2f}, rollout buffers {b['rollout_buffers']:.2f}, "
                f"simulator {b['simulator']:.1f}, CUDA context {b['cuda_context']:.1f}, rollout engine "
                f"{b['engine']:.1f}, then the larger of "
                f"rollout inference {b['rollout_inference']:.1f} and update activations "
                f"{b['update_activations']:.1f} ({b['activations_per_sample']:.2f} per sample x "
                f"micro-batch {self.config.micro_batch}, activation checkpointing "
                f"{'on' if self.config.activation_checkpointing else 'off'})")


# --- the estimate --------------------------------------------------------------------------------------------
def activation_bytes_per_sample(c: MemoryConfig) -> int:
    """Saved activations of one update sample (teacher-forced forward through towers, projector and LLM)."""
    m = c.model
    t = c.seq_tokens
    per_layer = m.llm_layer_act_bytes(c.act_bytes, c.lora_rank) * t
    if c.activation_checkpointing:
        llm = m.num_layers * c.act_bytes * m.hidden_size * t  # only each layer's input is kept
    else:
        llm = m.num_layers * per_layer
    edges = t * m.hidden_size * (2 * c.act_bytes + 4)  # embeddings, final norm (fp32) and its output
    head = c.action_dim * ACTION_BINS * 4 * 3  # 256-bin logits, log-softmax and its exp (fp32)
    return m.vision_act_bytes_per_image(c.act_bytes, c.lora_rank) + llm + edges + head


def _update_phase(c: MemoryConfig, buffers: int) -> int:
    m = c.model
    per_layer = m.llm_layer_act_bytes(c.act_bytes, c.lora_rank) * c.seq_tokens
    # Backward working set: gradients of one layer's activations, plus (checkpointing) the recomputed layer.
    working = (2 if c.activation_checkpointing else 1) * per_layer * c.micro_batch
    activations = activation_bytes_per_sample(c) * c.micro_batch + working
    # The update first gathers the valid frames into one tensor before copying them to the host.
    return max(activations, buffers)


def _transients(c: MemoryConfig) -> int:
    """The largest transient of one batched policy call: a prefill layer's or a vision block's, plus pixels."""
    m, n = c.model, c.num_parallel_envs
    prefill = n * (m.num_patches + c.prompt_tokens) * (3 * m.intermediate_size + 4 * m.hidden_size) * c.act_bytes
    vision = n * max(t.tokens * (3 * t.embed_dim + 2 * t.mlp_dim) for t in m.towers) * c.act_bytes
    h_img, w_img = c.image_size
    pixels = n * 3 * len(m.towers) * h_img * w_img * 4  # preprocessed float32 pixel values
    return max(prefill, vision) + pixels


def _rollout_phase(c: MemoryConfig) -> int:
    if c.rollout_engine:  # only the value bootstrap (one prefill, no cache) runs outside the engine
        return _transients(c)
    m, n = c.model, c.num_parallel_envs
    ctx = m.num_patches + c.prompt_tokens + c.action_dim
    kv_cache = n * m.num_layers * 2 * m.kv_dim * ctx * c.act_bytes
    # DynamicCache grows by torch.cat: one layer's cache is briefly held twice.
    return kv_cache + kv_cache // m.num_layers + _transients(c)


def _engine(c: MemoryConfig) -> int:
    """The rollout engine's persistent memory: merged LLM layer weights, static KV cache, graph pool."""
    if not c.rollout_engine:
        return 0
    m, n = c.model, c.num_parallel_envs
    weights = sum(o * i for o, i in m.layer_linear_shapes()) * m.num_layers * c.weight_bytes
    text = ENGINE_TEXT_BUCKET * math.ceil(c.prompt_tokens / ENGINE_TEXT_BUCKET)  # the engine's padded prompt
    kv_cache = n * m.num_layers * 2 * m.kv_dim * (m.num_patches + text + c.action_dim) * c.act_bytes
    return weights + kv_cache + _transients(c)


def _rollout_buffers(c: MemoryConfig) -> int:
    transitions = c.segments * c.num_parallel_envs * c.max_steps
    h_img, w_img = c.image_size
    per = h_img * w_img * 3 + 8 * c.action_dim + 4 * 5 + 3  # frame, tokens, 5 float32 scalars, 3 flags
    return transitions * per


def estimate(config: MemoryConfig, total_bytes: int) -> MemoryPlan:
    """The plan for ``config`` on a device of ``total_bytes`` (no error; see :func:`check_fits`)."""
    c, m = config, config.model
    lora = m.lora_params(c.lora_rank)
    vh = m.hidden_size * c.value_head_hidden + 2 * c.value_head_hidden + 1
    buffers = _rollout_buffers(c)
    sim = 0
    if c.sim_on_gpu and c.simulator in SIM_GPU_BYTES:
        base, per_env = SIM_GPU_BYTES[c.simulator]
        sim = base + per_env * c.num_parallel_envs
    elif c.simulator == "none":
        sim = c.num_parallel_envs * c.image_size[0] * c.image_size[1] * 3  # the synthetic frame batch
    return MemoryPlan(
        config=c, weights=m.total_params() * c.weight_bytes,
        lora_and_optimizer=lora * c.lora_param_bytes * 4,  # parameter, gradient, AdamW exp_avg and exp_avg_sq
        value_head=vh * 4 * 4,  # float32, same four copies
        rollout_buffers=buffers, simulator=sim, cuda_context=CUDA_CONTEXT_BYTES, engine=_engine(c),
        rollout_inference=_rollout_phase(c), update_activations=_update_phase(c, buffers),
        activations_per_sample=activation_bytes_per_sample(c),
        usable=int(total_bytes * (1.0 - c.headroom)),
    )


# --- fitting -------------------------------------------------------------------------------------------------
def _largest(values: Sequence[int], fits: Any) -> int | None:
    """The largest value in ascending ``values`` for which ``fits(value)`` holds (None if none does)."""
    best = None
    for v in values:
        if fits(v):
            best = v
    return best


def suggestions(plan: MemoryPlan, total_bytes: int) -> list[str]:
    """Concrete settings that would fit, most effective knob first."""
    c = plan.config
    out: list[str] = []
    if plan.weights + plan.cuda_context > plan.usable:
        out.append(f"the frozen weights alone need {plan.weights / GIB:.1f} GiB: use a GPU with more memory "
                   "(or shard the model with FSDP across GPUs)")
        return out
    if plan.update_activations >= plan.rollout_inference:
        if not c.activation_checkpointing and estimate(replace(c, activation_checkpointing=True), total_bytes).fits:
            out.append("enable activation checkpointing (VLAActorCritic(..., gradient_checkpointing=True)) "
                       f"to cut activations from {plan.activations_per_sample / GIB:.2f} to "
                       f"{activation_bytes_per_sample(replace(c, activation_checkpointing=True)) / GIB:.2f} "
                       "GiB per sample")
        micro = _largest(range(1, c.micro_batch), lambda k: estimate(
            replace(c, minibatch_size=k, grad_accumulation_steps=1), total_bytes).fits)
        if micro is not None:
            steps = math.ceil(c.minibatch_size / micro)
            out.append(f"raise ppo.grad_accumulation_steps to {steps} (micro-batch {micro}, minibatch_size "
                       f"{c.minibatch_size} unchanged) or lower ppo.minibatch_size to {micro}")
    if c.rollout_engine and estimate(replace(c, rollout_engine=False), total_bytes).fits:
        out.append(f"set rollout.engine: off (the rollout engine holds {plan.engine / GIB:.1f} GiB; rollouts "
                   "then use the slower eager sampler)")
    envs = _largest(range(1, c.num_parallel_envs), lambda n: estimate(replace(c, num_parallel_envs=n),
                                                                       total_bytes).fits)
    if envs is not None:
        out.append(f"lower rollout.num_parallel_envs to {envs}")
    if plan.rollout_buffers > plan.usable // 8:
        out.append(f"lower rollout.num_rollouts_per_update or rollout.max_steps (the buffered frames take "
                   f"{plan.rollout_buffers / GIB:.1f} GiB)")
    if not out:
        out.append("combine the knobs: raise ppo.grad_accumulation_steps, lower rollout.num_parallel_envs and "
                   "enable activation checkpointing, or use a GPU with more memory")
    return out


def check_fits(config: MemoryConfig, total_bytes: int) -> MemoryPlan:
    """The plan if ``config`` fits in ``total_bytes`` of device memory; otherwise :class:`MemoryPlanError`."""
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be the device's memory in bytes (> 0), got {total_bytes}")
    plan = estimate(config, total_bytes)
    if plan.fits:
        return plan
    hints = "; or ".join(suggestions(plan, total_bytes))
    raise MemoryPlanError(f"this VLA-RL config needs about {plan.peak / GIB:.1f} GiB of GPU memory but the device "
                          f"offers {plan.usable / GIB:.1f} GiB ({total_bytes / GIB:.1f} GiB less "
                          f"{config.headroom:.0%} headroom). {plan.summary()}. To fit: {hints}.")
