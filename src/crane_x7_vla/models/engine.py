"""Fast greedy action generation for :class:`~crane_x7_vla.models.openvla.OpenVLA` (gpt-fast style).

The eager path (:mod:`.generate`) is launch-bound on a GPU: ~7 transformers forwards with a growing
``DynamicCache`` and thousands of small kernel launches per action. This engine runs the same math over a
*static* KV cache with fixed shapes, so one whole action — vision towers, projector, prefill and the
``action_dim - 1`` decode steps, argmax included — is captured once per (batch, prompt-length) bucket as a
single CUDA graph and then replayed with one launch. Batches are padded up to a power of two and prompts are
padded to a multiple of ``text_bucket`` tokens, so a handful of graphs covers every request. The padding goes
after each prompt (:func:`prefill_layout`), so the prefill is plain causal attention (SDPA's flash kernel).

The decoder layer is written functionally over the model's own weight tensors (q/k/v and gate/up are stacked
once and the modules' weights become views, so no memory is added); its math is transformers' Llama layer
(float32 RMSNorm, rotate-half RoPE from the model's own rotary embedding, SiLU MLP). The vision towers,
projector, embeddings, final norm and LM head are the model's own modules; on CUDA the two vision towers run at
once on two streams. On CUDA the decode steps run their attention (with RoPE and the cache write) in Triton
(:mod:`.decode_attention`), and for up to 16 rows all of a layer in five kernels: the q/k/v, o, gate/up + SwiGLU
and down GEMVs (:mod:`.decode_linear`) and the attention, with the residual adds and the RMSNorms folded into
them (:func:`fused_decode_layers`). On CPU (or with ``use_cuda_graphs=False``) the same static function runs
eagerly, which is how CI checks that it reproduces :func:`.generate.predict_action`; the Triton path is checked against it
in Triton's CPU interpreter.

One robot's request may carry a draft of its tokens (by default its previous action; see
:meth:`OpenVLAEngine.generate`): the prefill also verifies it and Jacobi verify passes, graphs of their own, fix
the rest, so the tokens are the greedy ones whatever the draft and a right one saves every decode step.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from crane_x7_vla.models import decode_attention, decode_linear
from crane_x7_vla.models.config import ENGINE_TEXT_BUCKET
from crane_x7_vla.models.generate import SampleOutput, action_logits, log_probs_and_entropy
from crane_x7_vla.models.openvla import OpenVLA
from crane_x7_vla.models.processing import ImageLike, ModelInputs

log = logging.getLogger(__name__)

_MAX_DRAFTS = 64  # prompts whose previous action is kept as the next request's draft


def warmup_frame() -> np.ndarray:
    """A black camera-sized (640x480) frame for warm-ups: a frame already at the model's size would skip the GPU
    resize, whose one-time set-up (its first float64 product loads the library's kernels: 50-130 ms on the
    H200) would then fall on the first robot's first request."""
    return np.zeros((480, 640, 3), dtype=np.uint8)


@dataclass
class _Graph:
    """Static input/output buffers of one (batch, text length) bucket, and its CUDA graph when captured."""

    batch: int
    text_len: int
    pixel_values: Tensor  # [Bp, C, H, W]
    input_ids: Tensor  # [Bp, Lp]
    gather_idx: Tensor  # [Bp, T] index into cat(text_embeds, patches) along the sequence
    key_valid: Tensor  # [Bp, T] bool, False at padding
    positions: Tensor  # [Bp, T]
    tokens: Tensor  # [Bp, D] output
    # Sampling buckets only (None for greedy ones): restricted to the action ids, as generate.sample_action_tokens.
    temperature: Tensor | None = None  # [1] float32 (1 for greedy sampling, whose log-probs are at T = 1)
    gumbel: Tensor | None = None  # [Bp, D, n_bins] float32 noise (0 = greedy); filled before each replay
    log_probs: Tensor | None = None  # [Bp, D] float32 output
    entropy: Tensor | None = None  # [Bp, D] float32 output
    hidden: Tensor | None = None  # [Bp, H] output: last hidden state at the position predicting token 0
    graph: torch.cuda.CUDAGraph | None = None
    # Draft buckets only (batch 1, see OpenVLAEngine.generate): the prompt ends with the draft's first D - 1
    # tokens; ``tokens`` holds the known tokens followed by the current guesses of the rest.
    guess: Tensor | None = None  # [1, D] the draft, filled before the prefill's replay
    known: Tensor | None = None  # [1] output of every pass: how many leading ``tokens`` are exact
    steps: dict[tuple[int, int], torch.cuda.CUDAGraph] = field(default_factory=dict)  # verify pass (k, rows)
    # The host prompt (ids and mask bytes) whose layout the text buffers hold; None when they were last
    # written from device tensors (see OpenVLAEngine._fill_text).
    text_key: tuple[Any, ...] | None = None


@dataclass
class _LayerWeights:
    ln1: Tensor
    qkv: Tensor  # [(nH + 2 kvH) * hd, H]: q, k, v stacked; the modules' weights are views into it
    o: Tensor
    ln2: Tensor
    gate_up: Tensor  # [2 I, H]: gate and up stacked (views as above)
    down: Tensor
    eps: float


def _rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    # transformers' LlamaRMSNorm: normalise in float32, cast back, then scale.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _heads(qkv: Tensor, b: int, s: int, nh: int, nkv: int, hd: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fused q/k/v projections [B*S or B,S, ...] -> q [B,nh,S,hd], k and v [B,nkv,S,hd]."""
    q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    return (q.reshape(b, s, nh, hd).transpose(1, 2), k.reshape(b, s, nkv, hd).transpose(1, 2),
            v.reshape(b, s, nkv, hd).transpose(1, 2))


def _rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    c, sn = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * c + _rotate_half(q) * sn, k * c + _rotate_half(k) * sn


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, nh: int, nkv: int) -> Tensor:
    """SDPA of q [B,nh,S,hd] over k/v [B,nkv,T,hd] -> [B,S,nh*hd] (the o-projection's input). ``mask=None``:
    causal attention of a prompt over its own keys (S == T), which lets SDPA pick its flash kernel."""
    att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=nkv != nh)
    b, _, s, hd = att.shape
    return att.transpose(1, 2).reshape(b, s, nh * hd)


def _post_norm(x: Tensor, w: _LayerWeights) -> Tensor:
    return _rms_norm(x, w.ln2, w.eps)


def _swiglu(x: Tensor, w: _LayerWeights) -> Tensor:
    """The MLP's input to its down projection: silu(gate) * up of the post-attention RMSNorm of x."""
    gate, up = F.linear(_post_norm(x, w), w.gate_up).chunk(2, dim=-1)
    return F.silu(gate) * up


def _mlp_split(x: Tensor, att: Tensor, w: _LayerWeights) -> tuple[Tensor, Tensor]:
    """The rest of a decoder layer after attention: o-projection + residual, RMSNorm, SiLU MLP. Returns
    (x + o-projection, MLP output), whose sum is the layer's output."""
    x = x + F.linear(att, w.o)
    return x, F.linear(_swiglu(x, w), w.down)


def _mlp_residual(x: Tensor, att: Tensor, w: _LayerWeights) -> Tensor:
    """:func:`_mlp_split` with its residual added: the decoder layer's output."""
    x, delta = _mlp_split(x, att, w)
    return x + delta


def _layer_forward(x: Tensor, delta: Tensor | None, cos: Tensor, sin: Tensor, w: _LayerWeights, k_cache: Tensor,
                   v_cache: Tensor, cache_idx: Tensor, mask: Tensor | None, nh: int,
                   nkv: int, hd: int) -> tuple[Tensor, Tensor]:
    """One Llama decoder layer over a static cache; its input is x + delta [B,S,H] (delta None: x), cache_idx [S]
    slots to write. ``mask`` [B,1,S,Tmax]: attend over the cache (decode steps); None: a prompt laid out by
    :func:`prefill_layout`, causal over its own keys. Returns (x', delta') whose sum is the layer's output: the
    last residual add is left to the next layer, where it fuses with that layer's RMSNorm into one kernel."""
    if delta is not None:
        x = x + delta
    b, s, _ = x.shape
    q, k, v = _heads(F.linear(_rms_norm(x, w.ln1, w.eps), w.qkv), b, s, nh, nkv, hd)
    q, k = _rope(q, k, cos, sin)
    k_cache.index_copy_(2, cache_idx, k)
    v_cache.index_copy_(2, cache_idx, v)
    att = _attend(q, k, v, None, nh, nkv) if mask is None else _attend(q, k_cache, v_cache, mask, nh, nkv)
    return _mlp_split(x, att, w)


def _layer_in(x: Tensor, delta: Tensor | None, w: _LayerWeights) -> tuple[Tensor, Tensor]:
    """A layer up to its fused q/k/v projection: (x + delta, q/k/v [B,S,(nh+2nkv)hd])."""
    if delta is not None:
        x = x + delta
    return x, F.linear(_rms_norm(x, w.ln1, w.eps), w.qkv)


def fused_decode_layers(x: Tensor, cos: Tensor, sin: Tensor, layers: Sequence[_LayerWeights],
                        kv: tuple[Sequence[Tensor], Sequence[Tensor]], cache_idx: Tensor, key_valid: Tensor, nh: int,
                        nkv: int, hd: int, *, triton_qkv: bool = True, one_sequence: bool = False) -> Tensor:
    """All layers of a decode step (x [B<=16, H] embeddings, cos/sin [B, hd], caches kv[0][i]/kv[1][i]
    [B, nkv, T, hd] written at cache_idx [1] or [B], key_valid [B, T]) in five kernels a layer: the q/k/v GEMV
    (Triton, or cuBLAS without ``triton_qkv``), attention with RoPE and the cache write (two Triton kernels),
    and the o, gate/up + SwiGLU and down GEMVs. No RMSNorm has a kernel: the GEMV before each writes its output
    times the norm's weight and the output's partial sums of squares, and the kernel after it divides by the
    rms (see :func:`.decode_linear.linear_norm_out`). The residual adds are the o and down GEMVs' epilogues.
    ``one_sequence``: the rows are consecutive tokens of one sequence over one cache (expanded to B rows, see
    :func:`.decode_attention.decode_attention`). Returns the last layer's output [B, H]."""
    n = len(layers)
    xg, sq = decode_linear.norm_in(x, layers[0].ln1)
    for i, w in enumerate(layers):
        if triton_qkv:
            qkv = decode_linear.linear(xg, w.qkv, block_k=decode_linear.QKV_BLOCK_K,
                                       num_stages=decode_linear.QKV_STAGES)
        else:
            qkv = F.linear(xg, w.qkv)
        att = decode_attention.decode_attention(qkv, cos, sin, kv[0][i], kv[1][i], cache_idx, key_valid, nh, nkv,
                                                hd, rms=(sq, w.eps, x.shape[1]), one_sequence=one_sequence)
        h, hg, hsq = decode_linear.linear_norm_out(att, w.o, x, w.ln2)
        a = decode_linear.swiglu(hg, w.gate_up, rms_in=(hsq, w.eps))
        if i + 1 < n:
            x, xg, sq = decode_linear.linear_norm_out(a, w.down, h, layers[i + 1].ln1)
        else:
            x = decode_linear.linear(a, w.down, h)
    return x


@functools.cache
def _triton_probe(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run the Triton decode kernels once at small sizes against their torch references: None if they build
    and agree, else what went wrong. Once per device and dtype: every engine built there shares the answer."""
    try:
        g = torch.Generator(device=device).manual_seed(0)
        qkv, cs = (torch.randn(2, n, device=device, generator=g).to(dtype) for n in (3 * 32, 16))
        k, v = (torch.randn(2, 2, 24, 16, device=device, generator=g).to(dtype) for _ in range(2))
        col, valid = torch.tensor([20], device=device), torch.ones(2, 24, dtype=torch.bool, device=device)
        want = decode_attention.reference(qkv, cs, cs, k.clone(), v.clone(), col, valid, 2, 2, 16)
        got = decode_attention.decode_attention(qkv, cs, cs, k, v, col, valid, 2, 2, 16)
        w, w_sq = (torch.randn(n, 96, device=device, generator=g).to(dtype) for n in (64, 96))
        ln = torch.rand(96, device=device, generator=g).to(dtype) + 0.5
        h, hg, hsq = decode_linear.linear_norm_out(qkv, w_sq, qkv, ln)  # the next norm's input
        pairs = [(got, want), (h, decode_linear.reference(qkv, w_sq, qkv)),
                 (decode_linear.swiglu(hg, w, rms_in=(hsq, 1e-5)),
                  decode_linear.reference_swiglu(h, w, (ln, 1e-5)))]
        for a, b in pairs:  # relative to the output's scale: rounding paths differ, a wrong kernel is far off
            if not (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max() + 1e-3:
                return "results differ from the torch reference"
    except Exception as e:  # any failure to build or run them (unsupported GPU, Triton version, resources)
        return f"{type(e).__name__}: {e}"
    return None


def _effective_weight(lin: torch.nn.Module) -> Tensor:
    """The weight a Linear (or a PEFT LoRA-wrapped Linear) applies: W, or W + sum of its active LoRA deltas."""
    if type(lin) is torch.nn.Linear:
        if lin.bias is not None:
            raise ValueError("the engine supports bias-free Llama layers only; use model.predict_action")
        return lin.weight
    base = getattr(lin, "base_layer", None)
    if type(base) is torch.nn.Linear and hasattr(lin, "get_delta_weight"):
        if base.bias is not None:
            raise ValueError("the engine supports bias-free Llama layers only; use model.predict_action")
        w = base.weight
        if not getattr(lin, "merged", False):
            for name in getattr(lin, "active_adapters", []):
                if name in getattr(lin, "lora_A", {}):
                    w = w + lin.get_delta_weight(name).to(w.dtype)
        return w
    raise ValueError(f"the engine needs nn.Linear or PEFT LoRA Linear layers in the LLM, got {type(lin).__name__}")


def prefill_layout(attention_mask: Tensor, num_patches: int, text_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """Where each prefill slot's embedding comes from, for prompts of ``text_len`` columns (``attention_mask``
    [B, text_len]: 1 at the prompt's tokens, in order, wherever the padding is).

    Per row the sequence is [BOS, patches (P), rest of the prompt, pads...]: the padding goes last, so every real
    token's keys are the slots before it and a prompt needs only causal attention over itself (SDPA's flash
    kernel, no mask; the pads' outputs are never read, and decode steps mask their keys). Returns, each
    [B, text_len + P]: ``gather`` (index into cat(text embeddings, patch embeddings) along the sequence),
    ``valid`` (False at padding) and ``positions`` (0, 1, ... over the real slots, as the release's position
    ids; the pads repeat the last one, so ``positions[:, -1]`` is also the index of the last real slot)."""
    b, p, lp = attention_mask.shape[0], num_patches, text_len
    real = attention_mask.bool()
    n = real.sum(dim=1, keepdim=True)  # [B,1] prompt tokens per row
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)  # the prompt's columns first, in order
    slot = torch.arange(lp + p, device=real.device)[None, :].expand(b, -1)
    is_patch = (slot >= 1) & (slot <= p)
    nth = torch.where(slot > p, slot - p, torch.zeros_like(slot))  # which prompt token (0: BOS)
    gather = torch.where(is_patch, lp + slot - 1, order.gather(1, nth.clamp(max=lp - 1)))
    valid = is_patch | (nth < n)
    positions = valid.long().cumsum(dim=1) - 1
    return gather, valid, positions


def last_real(h: Tensor, positions: Tensor) -> Tensor:
    """Each row's hidden state at its last real prefill slot (h [B,T,H], ``positions`` from prefill_layout)."""
    return h.gather(1, positions[:, -1:, None].expand(-1, 1, h.shape[-1]))[:, 0]


def capture_graph(run: Callable[[], None], device: torch.device, pool: Any) -> torch.cuda.CUDAGraph:
    """``run`` once on a side stream (allocator, cuBLAS handles, compilation), then capture it into ``pool``."""
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        run()
    return graph


class OpenVLAEngine:
    """Greedy ``predict`` with a static KV cache (+ CUDA graphs on CUDA). Thread-safe; one call at a time."""

    def __init__(
        self,
        model: OpenVLA,
        *,
        max_batch: int = 32,
        text_bucket: int = ENGINE_TEXT_BUCKET,
        use_cuda_graphs: bool | None = None,
        compile_decode: bool = True,
        compile_prefill: bool = True,
        compile_vision: bool = True,
        parallel_towers: bool = True,
        triton_attention: bool | None = None,
        triton_gemv: bool | None = None,
        triton_fused_norms: bool | None = None,
        triton_qkv: bool = True,
        exact_batch_upto: int = 8,
        min_batch: int = 1,
        draft_previous: bool = True,
        verify_rows: int = 16,
    ) -> None:
        if verify_rows < 1:
            raise ValueError(f"verify_rows must be >= 1 (1: one token per verify pass), got {verify_rows}")
        self.model = model.eval()
        self.draft_previous = draft_previous
        self.verify_rows = verify_rows
        self._drafts: OrderedDict[tuple[int, bytes], Tensor] = OrderedDict()
        self.last_passes = 0  # LLM passes of the last generate call (1 + verify passes with a draft)
        self.max_batch = max_batch
        self.exact_batch_upto = exact_batch_upto
        self.min_batch = min_batch
        self.text_bucket = text_bucket
        self.device = model.device
        self.use_cuda_graphs = self.device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        if self.use_cuda_graphs and self.device.type != "cuda":
            raise ValueError("use_cuda_graphs=True needs the model on a CUDA device")
        lm = model.language_model.model
        cfg = model.language_model.config
        self.num_heads: int = cfg.num_attention_heads
        self.num_kv_heads: int = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim: int = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers: list[Any] = list(lm.layers)
        self.fused = self._fuse_weights()
        self._decode_layer: Callable[..., tuple[Tensor, Tensor]] = _layer_forward
        self._prefill_layer: Callable[..., tuple[Tensor, Tensor]] = _layer_forward
        if (compile_decode or compile_prefill) and self.device.type == "cuda":
            # Inductor fuses each layer's ~30 small elementwise kernels (RMSNorm, RoPE, SiLU, residuals) into a
            # few; the compiled kernels are then captured in the CUDA graph like any other. Every bucket is its
            # own static shape (prefill and decode), so allow more than dynamo's default 8 entries per function.
            import torch._dynamo.config as dynamo_config

            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 128)
            compiled = torch.compile(_layer_forward, dynamic=False, fullgraph=True)
            self._decode_layer = compiled if compile_decode else _layer_forward
            self._prefill_layer = compiled if compile_prefill else _layer_forward
        self._setup_triton_decode(triton_attention, triton_gemv, triton_fused_norms, compile_decode)
        self.triton_qkv = triton_qkv and self.triton_fused_norms  # q/k/v of the fused path: Triton, else cuBLAS
        self._vision: Callable[[Tensor], Tensor] = self._vision_forward
        self._tower_stream: torch.cuda.Stream | None = None
        backbone = model.vision_backbone
        if compile_vision and self.device.type == "cuda":
            # The two towers and the projector are ~50 transformer blocks of small kernels; inductor fuses their
            # norms, GELUs and residuals as it does the LLM layers'.
            if parallel_towers and len(backbone.towers) == 2:
                self._tower_stream = torch.cuda.Stream(device=self.device)
                self._towers = (torch.compile(backbone.featurizer, dynamic=False),
                                torch.compile(backbone.fused_featurizer, dynamic=False))
                self._project = torch.compile(model.projector, dynamic=False)
                self._vision = self._vision_two_streams
            else:
                self._vision = torch.compile(self._vision_forward, dynamic=False)
        self.num_patches = model.config.vision_towers[0].num_patches
        self._graphs: dict[tuple[int, int, int, bool, bool], _Graph] = {}
        self._caches: dict[tuple[int, int], tuple[list[Tensor], list[Tensor]]] = {}
        self._pool: Any = None
        self._lock = threading.Lock()

    def _setup_triton_decode(self, attention: bool | None, gemv: bool | None, fused_norms: bool | None,
                             compile_decode: bool) -> None:
        """Decode steps through Triton (default on CUDA with Triton and compile_decode): RoPE, the cache writes
        and attention in two kernels (:mod:`.decode_attention`); with up to 16 rows also the o and down
        projections with their residual adds (no split-K) and gate/up with its SwiGLU in :mod:`.decode_linear`'s
        GEMVs; with ``fused_norms`` (up to 16 rows) the RMSNorms inside the GEMVs and attention around them, five
        kernels a layer (:func:`fused_decode_layers`). By default the kernels are first probed at small sizes,
        and a GPU where they fail keeps the torch path (logged)."""
        if attention is None:
            attention = compile_decode and self.device.type == "cuda" and decode_attention.triton_available()
            if attention:  # the default: a GPU whose Triton cannot build the kernels keeps the torch path
                error = _triton_probe(self.device, self.model.dtype)
                if error is not None:
                    log.warning("Triton decode kernels unavailable on %s (%s); decoding through torch/cuBLAS",
                                torch.cuda.get_device_name(self.device), error)
                    attention = gemv = fused_norms = False
        self.triton_attention = bool(attention)
        self.triton_gemv = self.triton_attention if gemv is None else gemv
        self.triton_fused_norms = self.triton_gemv if fused_norms is None else fused_norms
        for knob, needs, name in ((self.triton_gemv, self.triton_attention, "triton_gemv needs triton_attention"),
                                  (self.triton_fused_norms, self.triton_gemv, "triton_fused_norms needs triton_gemv")):
            if knob and not needs:
                raise ValueError(f"{name} (the decode layer it is part of)")
        if not attention:
            return
        if not decode_attention.usable(torch.empty(0, device=self.device)):
            raise ValueError("triton_attention=True needs Triton and a CUDA model (or TRITON_INTERPRET=1 on CPU)")
        on_gpu = self.device.type == "cuda" and compile_decode

        def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
            return torch.compile(fn, dynamic=False, fullgraph=True) if on_gpu else fn

        self._layer_in, self._layer_out = compiled(_layer_in), compiled(_mlp_split)
        self._post_norm = compiled(_post_norm)
        self._decode_layer = self._triton_decode_layer

    def _triton_decode_layer(self, x: Tensor, delta: Tensor | None, cos: Tensor, sin: Tensor, w: _LayerWeights,
                             k_cache: Tensor, v_cache: Tensor, cache_idx: Tensor, mask: Tensor | None, nh: int,
                             nkv: int, hd: int) -> tuple[Tensor, Tensor]:
        """:func:`_layer_forward` of a decode step (S == 1, ``mask`` [B,1,1,T]) with its attention, and up to 16
        rows its o, gate/up and down GEMVs, in Triton."""
        assert mask is not None and x.shape[1] == 1
        x, qkv = self._layer_in(x, delta, w)
        att = decode_attention.decode_attention(qkv[:, 0], cos[:, 0], sin[:, 0], k_cache, v_cache, cache_idx,
                                                mask[:, 0, 0], nh, nkv, hd)
        if not (self.triton_gemv and decode_linear.usable(att)):
            return self._layer_out(x, att[:, None], w)  # type: ignore[no-any-return]
        x = decode_linear.linear(att, w.o, x[:, 0])[:, None]
        a = decode_linear.swiglu(self._post_norm(x, w)[:, 0], w.gate_up)
        return x, decode_linear.linear(a, w.down)[:, None]

    def fused_decode_usable(self, x: Tensor) -> bool:
        """Whether a decode step with embeddings x [B, H] runs :func:`fused_decode_layers` (up to 16 rows)."""
        return self.triton_fused_norms and decode_linear.usable(x)

    def _fused_decode_trunk(self, x: Tensor, cos: Tensor, sin: Tensor, kv: tuple[list[Tensor], list[Tensor]],
                            cache_idx: Tensor, key_valid: Tensor, one_sequence: bool = False) -> Tensor:
        """:func:`fused_decode_layers` over this engine's layers (``one_sequence``: x's rows are tokens of the
        one sequence of the batch-1 caches ``kv``)."""
        if one_sequence:
            rows = x.shape[0]
            kv = ([c.expand(rows, -1, -1, -1) for c in kv[0]], [c.expand(rows, -1, -1, -1) for c in kv[1]])
        return fused_decode_layers(x, cos, sin, self.fused, kv, cache_idx, key_valid, self.num_heads,
                                   self.num_kv_heads, self.head_dim, triton_qkv=self.triton_qkv,
                                   one_sequence=one_sequence)

    def _linears(self, layer: Any) -> list[torch.nn.Module]:
        at, mlp = layer.self_attn, layer.mlp
        return [at.q_proj, at.k_proj, at.v_proj, at.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]

    def _fuse_weights(self) -> list[_LayerWeights]:
        """Stack q/k/v and gate/up weights so each is one GEMM.

        Plain Linear layers: the modules keep views into the stacked tensors (no extra memory). LoRA-wrapped
        layers (RL rollouts): the engine owns merged copies W + BA, recomputed in place by
        :meth:`refresh_weights` so captured graphs stay valid while the adapters train."""
        out = []
        self.merged_lora = any(type(lin) is not torch.nn.Linear for layer in self.layers for lin in self._linears(layer))
        for layer in self.layers:
            at, mlp = layer.self_attn, layer.mlp
            q, k, v, o, gate, up, down = (_effective_weight(lin) for lin in self._linears(layer))
            with torch.no_grad():
                qkv = torch.cat([q, k, v])
                gu = torch.cat([gate, up])
                if self.merged_lora:
                    o, down = o.clone(), down.clone()
                else:
                    nq, nk = q.shape[0], k.shape[0]
                    at.q_proj.weight.data = qkv[:nq]
                    at.k_proj.weight.data = qkv[nq : nq + nk]
                    at.v_proj.weight.data = qkv[nq + nk :]
                    ni = gate.shape[0]
                    mlp.gate_proj.weight.data = gu[:ni]
                    mlp.up_proj.weight.data = gu[ni:]
            out.append(_LayerWeights(layer.input_layernorm.weight, qkv, o, layer.post_attention_layernorm.weight,
                                     gu, down, float(layer.input_layernorm.variance_epsilon)))
        return out

    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Re-merge the LoRA adapters into the engine's weights (in place); a no-op for plain weights."""
        if not self.merged_lora:
            return
        with self._lock:
            for layer, w in zip(self.layers, self.fused, strict=True):
                q, k, v, o, gate, up, down = (_effective_weight(lin) for lin in self._linears(layer))
                torch.cat([q, k, v], out=w.qkv)
                torch.cat([gate, up], out=w.gate_up)
                w.o.copy_(o)
                w.down.copy_(down)

    # ------------------------------------------------------------------ public API
    def predict(
        self, images: Sequence[ImageLike], instructions: Sequence[str], unnorm_key: str | None = None
    ) -> np.ndarray:
        """Same contract as :meth:`OpenVLA.predict_action`: unnormalised actions (B, action_dim) float32."""
        return self.predict_from_inputs(self.prepare_inputs(images, instructions), unnorm_key)

    # The policy interface of the inference service (same names as the model's).
    predict_action = predict

    def prepare_inputs(self, images: Sequence[ImageLike], instructions: Sequence[str]) -> ModelInputs:
        """The model's inputs with the pixels on the device and the prompt ids on the host: the engine lays a
        prompt out once and reuses it while it repeats (a robot's instruction does), and a drafted request's
        lookup of its previous action then reads no device memory."""
        return self.model.prepare_inputs(images, instructions, text_on_device=False)

    def predict_from_inputs(self, inputs: ModelInputs, unnorm_key: str | None = None) -> np.ndarray:
        """Greedy actions (B, action_dim) for already prepared inputs. With ``draft_previous`` a single robot's
        request is drafted with the previous action of the same prompt (see :meth:`generate`)."""
        d = self.model.action_stats(unnorm_key).dim
        if not (self.draft_previous and inputs.batch_size == 1 and d >= 2):
            return self.model.decode_actions(self.generate(inputs, d), unnorm_key)
        key = (d, inputs.input_ids[inputs.attention_mask.bool()].cpu().numpy().tobytes())
        with self._lock:
            draft = self._drafts.get(key)
        tokens = self.generate(inputs, d, draft=draft).cpu()  # kept on the host: the next check reads no device
        with self._lock:
            self._drafts[key] = tokens[0]
            self._drafts.move_to_end(key)
            while len(self._drafts) > _MAX_DRAFTS:
                self._drafts.popitem(last=False)
        return self.model.decode_actions(tokens, unnorm_key)

    def generate(self, inputs: ModelInputs, action_dim: int, draft: Tensor | None = None) -> Tensor:
        """Greedy action token ids [B, action_dim] (argmax over the full vocabulary, as the release).

        ``draft`` (batch 1 only; [action_dim] token ids, e.g. the robot's previous action) is a guess that is
        verified, never trusted: the prefill also runs the draft's first D - 1 tokens after the prompt, so its
        last D rows predict every token whose prefix the draft got right. Each verify pass then feeds the first
        unknown token's known predecessor plus the current guesses for the rest (Jacobi decoding: a guess is the
        latest prediction at its place) and again keeps every prediction whose inputs were all exact. Every pass
        fixes at least one token, so the result is the greedy tokens whatever the draft; a right draft costs one
        prefill and no decode step. ``verify_rows`` caps the rows of a verify pass (1: plain decode steps)."""
        if draft is None:
            self.last_passes = action_dim
            return self._execute(inputs, action_dim, None, None).tokens
        return self._speculate(inputs, action_dim, draft)

    def sample(self, inputs: ModelInputs, temperature: float, generator: torch.Generator | None = None) -> SampleOutput:
        """What :func:`.generate.sample_action_tokens` returns, from the static graph: tokens sampled from the
        action ids at ``temperature`` (0 = greedy over them, log-probs then at T = 1), their log-probs and
        entropies, and the hidden state that predicts the first token (for a value head).

        Sampling is Gumbel-max (argmax of logits / T plus Gumbel noise drawn with ``generator`` before the
        replay), an exact sample of softmax(logits / T) that keeps the random draw outside the CUDA graph."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return self._execute(inputs, self.model.num_action_tokens, float(temperature), generator)

    def _execute(self, inputs: ModelInputs, d: int, temperature: float | None,
                 generator: torch.Generator | None) -> SampleOutput:
        b = inputs.batch_size
        if b > self.max_batch:  # split oversize batches
            step = self.max_batch
            parts = [self._execute(ModelInputs(inputs.pixel_values[i : i + step], inputs.input_ids[i : i + step],
                                               inputs.attention_mask[i : i + step]), d, temperature, generator)
                     for i in range(0, b, step)]
            return SampleOutput(*(torch.cat([getattr(p, f) for p in parts])
                                  for f in ("tokens", "log_probs", "entropy", "hidden")))
        length = inputs.input_ids.shape[1]
        lp = self.text_bucket * math.ceil(length / self.text_bucket)
        sample = temperature is not None
        noise = None
        if sample and temperature:
            # Gumbel(0, 1) = -log(Exp(1)); drawn on the generator's device, outside the graph.
            gen_dev = generator.device if generator is not None else self.device
            e = torch.empty((b, d, self.model.action_tokenizer.n_bins), device=gen_dev).exponential_(generator=generator)
            noise = -torch.log(e)
        with self._lock, torch.inference_mode():
            g = self._bucket(self.batch_bucket(b), lp, d, sample)
            self._fill(g, inputs)
            if sample:
                assert g.gumbel is not None and g.temperature is not None
                g.temperature.fill_(temperature or 1.0)
                g.gumbel.zero_()
                if noise is not None:
                    g.gumbel[:b].copy_(noise)
            if self.use_cuda_graphs:
                if g.graph is None:
                    self._capture(g, d)
                assert g.graph is not None
                g.graph.replay()
            else:
                self._run(g, d)
            out = (g.tokens, g.log_probs, g.entropy, g.hidden)
            rows = [t[:b] for t in out if t is not None]
        # Cloned outside inference mode: ordinary tensors the caller may use under autograd (as indices).
        if not sample:
            return SampleOutput(rows[0].clone(), torch.empty(0), torch.empty(0), torch.empty(0))
        return SampleOutput(*(t.clone() for t in rows))

    def warmup(self, instruction: str = "pick up the object", unnorm_key: str | None = None) -> None:
        """Capture one robot's graphs for prompts in ``instruction``'s length bucket before serving (a capture
        compiles and takes seconds, which would otherwise stall the first actions): the plain action and, with
        ``draft_previous``, the draft prefill and every verify pass. Also preprocesses a camera-sized frame
        once (the GPU resize's one-time set-up)."""
        d = self.model.action_stats(unnorm_key).dim
        inputs = self.prepare_inputs([warmup_frame()], [instruction])
        if self.draft_previous and d >= 2:  # first: its longer prompt sizes the cache the plain graph then uses
            with self._lock, torch.inference_mode():
                g = self._draft_bucket(inputs, d, torch.zeros(d, dtype=torch.long))
                for k in range(d):  # every pass a request can reach, whatever its draft
                    self._pass(g, d, k, d if k == 0 else min(d - k, self.verify_rows))
        self.generate(inputs, d)

    def _speculate(self, inputs: ModelInputs, d: int, draft: Tensor) -> Tensor:
        with self._lock, torch.inference_mode():
            g = self._draft_bucket(inputs, d, draft)
            assert g.known is not None
            self._pass(g, d, 0, d)
            passes, k = 1, int(g.known.item())
            while k < d:  # each pass makes at least one more token exact
                self._pass(g, d, k, min(d - k, self.verify_rows))
                passes, k = passes + 1, int(g.known.item())
            self.last_passes = passes
            return g.tokens[:1].clone()

    def _draft_bucket(self, inputs: ModelInputs, d: int, draft: Tensor) -> _Graph:
        """The draft bucket of a batch-1 request, filled: the prompt followed by the draft's first D - 1 tokens,
        and the draft as the first guesses."""
        if inputs.batch_size != 1:
            raise ValueError(f"a draft is for one robot's request (batch 1), got batch {inputs.batch_size}; "
                             "call generate without draft for batches")
        draft = torch.as_tensor(draft).reshape(-1).to(dtype=torch.long)
        if draft.numel() != d or d < 2:
            raise ValueError(f"draft must hold action_dim = {d} token ids (>= 2), got {draft.numel()}")
        vocab = self.model.language_model.config.vocab_size
        lo, hi = (int(v) for v in draft.aminmax())  # a host draft (the engine's own) is checked without a sync
        if not 0 <= lo <= hi < vocab:
            raise ValueError(f"draft token ids must be in [0, {vocab}), got {draft.tolist()}")
        # A host draft goes through pinned memory: a pageable copy would wait for the frame's preprocessing.
        pinned = draft.device.type == "cpu" and self.device.type == "cuda"
        draft = (draft.pin_memory() if pinned else draft).to(self.device, non_blocking=pinned)
        guess = draft[None]
        # The prompt, then D - 1 placeholders for the draft's first tokens, written below (the prompt's layout
        # stays cached while the prompt repeats; only the draft changes between a robot's requests).
        room = inputs.input_ids.new_zeros(1, d - 1)
        ids = torch.cat([inputs.input_ids, room], dim=1)
        am = torch.cat([inputs.attention_mask, torch.ones_like(room)], dim=1)
        lp = self.text_bucket * math.ceil(ids.shape[1] / self.text_bucket)
        g = self._bucket(1, lp, d, spec=True)
        assert g.guess is not None
        self._fill(g, ModelInputs(inputs.pixel_values, ids, am))
        g.input_ids[:, lp - (d - 1) :].copy_(guess[:, :-1])  # left padding: the draft's columns are the last
        g.guess.copy_(guess)
        return g

    def _pass(self, g: _Graph, d: int, k: int, rows: int) -> None:
        """Replay (capturing on first use) or run pass (k, rows): the prefill when k == 0, else a verify pass."""
        def run() -> None:
            if k == 0:
                self._draft_prefill(g, d)
            else:
                self._verify(g, d, k, rows)
        if not self.use_cuda_graphs:
            run()
            return
        graph = g.steps.get((k, rows))
        if graph is None:
            graph = g.steps[(k, rows)] = capture_graph(run, self.device, self._graph_pool())
        graph.replay()

    def batch_bucket(self, b: int) -> int:
        """Padded batch size of a request of ``b`` rows: exact up to ``exact_batch_upto``, then powers of two
        (a prefill costs per padded row, so small multi-robot batches are not rounded up), at least
        ``min_batch``."""
        bp = b if b <= self.exact_batch_upto else decode_attention.next_pow2(b)
        return min(max(bp, self.min_batch), self.max_batch)

    # ------------------------------------------------------------------ buffers
    def _bucket(self, bp: int, lp: int, d: int, sample: bool = False, spec: bool = False) -> _Graph:
        key = (bp, lp, d, sample, spec)
        if key not in self._graphs:
            m, dev = self.model, self.device
            img = m.config.vision_towers[0].image_size
            chans = 3 * len(m.config.vision_towers)
            t = lp + self.num_patches
            self._graphs[key] = _Graph(
                batch=bp,
                text_len=lp,
                pixel_values=torch.zeros(bp, chans, img, img, device=dev, dtype=m.dtype),
                input_ids=torch.full((bp, lp), m.config.pad_token_id, device=dev, dtype=torch.long),
                gather_idx=torch.zeros(bp, t, device=dev, dtype=torch.long),
                key_valid=torch.zeros(bp, t, device=dev, dtype=torch.bool),
                positions=torch.zeros(bp, t, device=dev, dtype=torch.long),
                tokens=torch.zeros(bp, d, device=dev, dtype=torch.long),
            )
            if spec:
                g = self._graphs[key]
                g.guess = torch.zeros(bp, d, device=dev, dtype=torch.long)
                g.known = torch.zeros(bp, device=dev, dtype=torch.long)
            if sample:
                g = self._graphs[key]
                n_bins = m.action_tokenizer.n_bins
                g.temperature = torch.ones(1, device=dev)
                g.gumbel = torch.zeros(bp, d, n_bins, device=dev)
                g.log_probs = torch.zeros(bp, d, device=dev)
                g.entropy = torch.zeros(bp, d, device=dev)
                g.hidden = torch.zeros(bp, m.language_model.config.hidden_size, device=dev, dtype=m.dtype)
        return self._graphs[key]

    def _kv(self, bp: int, max_len: int) -> tuple[list[Tensor], list[Tensor]]:
        """Static K/V buffers [Bp, kvH, max_len, hd] per layer, shared by all buckets of one batch size."""
        have = self._caches.get((bp, 0))
        if have is not None and have[0][0].shape[2] >= max_len:
            return have
        shape = (bp, self.num_kv_heads, max_len, self.head_dim)
        dtype = self.model.dtype
        kv = (
            [torch.zeros(shape, device=self.device, dtype=dtype) for _ in self.layers],
            [torch.zeros(shape, device=self.device, dtype=dtype) for _ in self.layers],
        )
        self._caches[(bp, 0)] = kv
        # A bigger cache invalidates graphs captured against the old buffers.
        for key, g in self._graphs.items():
            if key[0] == bp:
                g.graph = None
                g.steps.clear()
        return kv

    def _fill(self, g: _Graph, inputs: ModelInputs) -> None:
        """Copy one request into the bucket's static buffers (left-pad text, repeat row 0 into spare rows)."""
        b = inputs.batch_size
        self._fill_text(g, inputs.input_ids, inputs.attention_mask)
        pix = inputs.pixel_values
        if b < g.batch:
            pix = torch.cat([pix, pix[:1].expand(g.batch - b, -1, -1, -1)])
        g.pixel_values.copy_(pix.to(g.pixel_values.dtype))

    def _fill_text(self, g: _Graph, input_ids: Tensor, attention_mask: Tensor) -> None:
        """The prompt's ids and layout (:func:`prefill_layout`) into the bucket's buffers. Ids on the host (as
        :meth:`prepare_inputs` gives them) are laid out there, and only when they differ from the bucket's last
        prompt: a robot repeats its instruction, so its requests then cost no text work at all. Device ids are
        laid out on the device every time (reading them back would wait for the device)."""
        key = None
        if input_ids.device.type == "cpu":
            key = (tuple(input_ids.shape), input_ids.numpy().tobytes(), attention_mask.numpy().tobytes())
            if key == g.text_key:
                return
        b, length = input_ids.shape
        pad = g.text_len - length
        ids = F.pad(input_ids, (pad, 0), value=self.model.config.pad_token_id)
        am = F.pad(attention_mask, (pad, 0), value=0)
        if b < g.batch:
            rep = g.batch - b
            ids = torch.cat([ids, ids[:1].expand(rep, -1)])
            am = torch.cat([am, am[:1].expand(rep, -1)])
        gather, valid, positions = prefill_layout(am, self.num_patches, g.text_len)
        for dst, src in ((g.input_ids, ids), (g.gather_idx, gather), (g.key_valid, valid), (g.positions, positions)):
            dst.copy_(src)
        g.text_key = key

    # ------------------------------------------------------------------ the static computation
    def _trunk(self, x: Tensor, positions: Tensor, idx: Tensor, mask: Tensor | None,
               kv: tuple[list[Tensor], list[Tensor]]) -> Tensor:
        """The layers over x [B, S, H] at ``positions`` [B, S], writing cache columns ``idx`` [S]; ``mask``
        [B, 1, S, Tmax] (None: a prompt, causal over itself). Returns the last layer's output [B, S, H]."""
        lm = self.model.language_model.model
        cos, sin = lm.rotary_emb(x, positions)
        s = x.shape[1]
        if mask is not None and s == 1 and self.fused_decode_usable(x[:, 0]):
            return self._fused_decode_trunk(x[:, 0], cos[:, 0], sin[:, 0], kv, idx, mask[:, 0, 0])[:, None]
        if mask is not None and x.shape[0] == 1 and self.fused_decode_usable(x[0]):  # a verify pass's rows
            return self._fused_decode_trunk(x[0], cos[0], sin[0], kv, idx, mask[0, 0], one_sequence=True)[None]
        fn = self._decode_layer if s == 1 else self._prefill_layer
        delta: Tensor | None = None
        for i, w in enumerate(self.fused):
            x, delta = fn(x, delta, cos, sin, w, kv[0][i], kv[1][i], idx, mask, self.num_heads, self.num_kv_heads,
                          self.head_dim)
        assert delta is not None
        return x + delta  # the last layer's output (before the final norm)

    def _run(self, g: _Graph, d: int) -> None:
        # The named ranges let torch.profiler split CUDA time by phase (bench/profile_engine.py); a CUDA graph
        # replay does not see them.
        m = self.model
        bp, t = g.batch, g.gather_idx.shape[1]
        kv = self._kv(bp, t + d)
        tmax = kv[0][0].shape[2]  # the shared cache may be longer than this bucket needs
        embed, norm = m.language_model.model.embed_tokens, m.language_model.model.norm
        x = self.prefill_embeddings(g.pixel_values, g.input_ids, g.gather_idx)
        with record_function("engine.prefill"):
            h = norm(last_real(self._trunk(x, g.positions, torch.arange(t, device=x.device), None, kv),
                               g.positions))  # [Bp,H]
            if g.hidden is not None:
                g.hidden.copy_(h)
            tok = self._select(g, h, 0)
        pos = g.positions[:, -1:]
        key_valid = F.pad(g.key_valid, (0, tmax - t), value=False)  # [Bp, Tmax]: the keys decode steps see
        with record_function("engine.decode"):
            for step in range(1, d):
                key_valid = key_valid.clone()
                key_valid[:, t + step - 1] = True
                pos = pos + 1
                x = embed(tok[:, None])
                idx = torch.arange(t + step - 1, t + step, device=x.device)
                h = norm(self._trunk(x, pos, idx, key_valid[:, None, None, :], kv)[:, -1])
                tok = self._select(g, h, step)

    def _draft_prefill(self, g: _Graph, d: int) -> None:
        """Pass 0 of :meth:`generate` with a draft: the prompt + the draft's first D - 1 tokens (no padding
        among them: :func:`prefill_layout` puts it last), whose last D rows predict tokens 0..D-1."""
        assert g.guess is not None
        t = g.gather_idx.shape[1]
        kv = self._kv(1, t + d)
        x = self.prefill_embeddings(g.pixel_values, g.input_ids, g.gather_idx)
        with record_function("engine.prefill"):
            h = self._trunk(x, g.positions, torch.arange(t, device=x.device), None, kv)
            rows = g.positions[:, -1:] - (d - 1) + torch.arange(d, device=x.device)  # [1, D] slot = position
            h = h.gather(1, rows[:, :, None].expand(-1, -1, h.shape[-1]))
            self._accept(g, 0, g.guess[:, :-1], self.greedy_tokens(self.model.language_model.model.norm(h)))

    def _verify(self, g: _Graph, d: int, k: int, rows: int) -> None:
        """A verify pass of :meth:`generate` once tokens 0..k-1 are exact: ``rows`` inputs, token k-1 and the
        guesses after it, at their slots of the draft prefill (over its draft's stale keys), causal over them."""
        kv = self._kv(1, g.gather_idx.shape[1] + d)
        tmax = kv[0][0].shape[2]
        pos = g.positions[:, -1:] - (d - 1) + k + torch.arange(rows, device=g.positions.device)  # [1, rows]
        inp = g.tokens[:, k - 1 : k - 1 + rows].clone()
        mask = torch.arange(tmax, device=pos.device) <= pos[:, :, None]  # [1, rows, Tmax]: the slots up to own
        with record_function("engine.decode"):
            x = self.model.language_model.model.embed_tokens(inp)
            h = self._trunk(x, pos, pos[0], mask[:, None], kv)
            self._accept(g, k, inp[:, 1:], self.greedy_tokens(self.model.language_model.model.norm(h)))

    @staticmethod
    def _accept(g: _Graph, k: int, guessed: Tensor, pred: Tensor) -> None:
        """Predictions pred [1, R] of tokens k..k+R-1 from a pass whose inputs after its first were ``guessed``
        [1, R-1]: pred[0] is exact, and so is pred[j] while guessed[:j] == pred[:j]. Stores them (the exact ones
        and the next guesses) and the new count of exact tokens."""
        assert g.known is not None
        right = (guessed == pred[:, :-1]).long().cumprod(dim=1).sum(dim=1)
        g.known.copy_(k + 1 + right)
        g.tokens[:, k : k + pred.shape[1]] = pred

    def prefill_embeddings(self, pixel_values: Tensor, input_ids: Tensor, gather_idx: Tensor) -> Tensor:
        """Vision towers + projector, then the prompt's sequence [B, T, H] laid out by ``gather_idx``
        (:func:`prefill_layout`): text embeddings with the patch embeddings after BOS."""
        return self.prefill_sequence(self.patch_embeddings(pixel_values), input_ids, gather_idx)

    def patch_embeddings(self, pixel_values: Tensor) -> Tensor:
        """Vision towers + projector: [B, P, H] in the LLM's dtype."""
        with record_function("engine.vision"):
            return self._vision(pixel_values).to(self.model.dtype)

    def prefill_sequence(self, patches: Tensor, input_ids: Tensor, gather_idx: Tensor) -> Tensor:
        """The prompt's sequence [B, T, H] from its patch embeddings [B, P, H] and text ids (see above)."""
        src = torch.cat([self.model.language_model.model.embed_tokens(input_ids), patches], dim=1)  # [B,Lp+P,H]
        return src.gather(1, gather_idx[:, :, None].expand(-1, -1, src.shape[-1]))

    def _vision_two_streams(self, pixel_values: Tensor) -> Tensor:
        """The backbone's two towers at once, on two streams (two branches of a captured graph): at the batch
        sizes of an action each tower alone leaves most SMs idle. The same math as the backbone's forward."""
        assert self._tower_stream is not None
        a, b = torch.split(pixel_values, 3, dim=1)
        main, side = torch.cuda.current_stream(self.device), self._tower_stream
        side.wait_stream(main)
        with torch.cuda.stream(side):
            fb = self._towers[1](b)
        fa = self._towers[0](a)
        main.wait_stream(side)  # every later use of the side stream waits for main first: fb is not reused early
        return self._project(torch.cat([fa, fb], dim=2))  # type: ignore[no-any-return]

    def _vision_forward(self, pixel_values: Tensor) -> Tensor:
        return self.model.projector(self.model.vision_backbone(pixel_values))  # type: ignore[no-any-return]

    def greedy_tokens(self, h: Tensor) -> Tensor:
        """Argmax over the full vocabulary of the final hidden states h [B,H] (the release's greedy decoding)."""
        return self.model.language_model.lm_head(h).argmax(dim=-1)  # type: ignore[no-any-return]

    def _select(self, g: _Graph, h: Tensor, step: int) -> Tensor:
        """Token ``step`` from hidden states h [Bp,H] into g.tokens (and g.log_probs/g.entropy when sampling)."""
        m = self.model
        if g.gumbel is None:  # greedy over the full vocabulary, as the release
            tok = self.greedy_tokens(h)
        else:  # the same math as generate.sample_action_tokens, restricted to the action ids
            assert g.temperature is not None and g.log_probs is not None and g.entropy is not None
            logp, entropy = log_probs_and_entropy(action_logits(m, h), g.temperature)  # [Bp,n_bins], [Bp]
            idx = (logp + g.gumbel[:, step]).argmax(dim=-1)
            g.log_probs[:, step] = logp.gather(-1, idx[:, None]).squeeze(-1)
            g.entropy[:, step] = entropy
            tok = idx + m.action_tokenizer.first_token_id
        g.tokens[:, step] = tok
        return tok

    def _graph_pool(self) -> Any:
        if self._pool is None:  # every graph of the engine shares one memory pool: one request runs at a time
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def _capture(self, g: _Graph, d: int) -> None:
        g.graph = capture_graph(lambda: self._run(g, d), self.device, self._graph_pool())
