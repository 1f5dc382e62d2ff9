"""Continuous batching of several robots' greedy actions over the OpenVLA engine's weights (multi-robot serving).

Why not synchronous batches (:class:`~crane_x7_vla.models.batcher.BatchedPolicy`): an action is one prefill
(~290 tokens: compute-bound) and ``action_dim - 1`` decode steps (one token: bound by reading the 13 GB of
layer weights). A synchronous batch makes a request that arrives while a batch runs wait for the whole batch,
then for its own, and decodes every batch's rows separately. Here every engine *step* is one forward that
reads the weights once for both: the prefills of the requests admitted at this step (``k`` rows of the
prompt) and one decode token for every slot already running. A request joins at the next step boundary
(a few ms), its decode tokens ride along with other robots' prefills, and a robot's action costs the GPU its
prefill plus a share of the decode steps.

State lives in static buffers on the device: ``slots`` rows of KV cache (the prompt at columns ``[0, T)``, the
decode tokens after it, the last column a scratch column that idle rows write to), and per slot the current
token, position, write column, token count and an active flag. A step updates all of them itself, so on
CUDA each step kind (decode only, or ``k`` prefills + decode, per prompt-length bucket) is one CUDA graph
and the host only copies new requests in and reads finished rows out, both without waiting for the GPU. The
host knows which slots finish at a step (every action has ``action_dim`` tokens); it queues the next step
before it waits for the one that finished them, so the GPU does not idle while the host resolves requests.
The admitted prompts' vision towers are not part of a step: they run on a stream of their own as soon as the
prompts are admitted, beside the step in flight (:meth:`ContinuousBatcher._encode`), and each caller thread
preprocesses its frame on its own stream, so that neither waits behind the steps queued on the default stream.

The math per token is the engine's (:mod:`.engine`: fused q/k/v and gate/up GEMMs, float32 RMSNorm, the
model's rotary embedding, greedy argmax over the full vocabulary), so on CPU in float32 the actions equal
:meth:`OpenVLAEngine.predict` and the release's eager loop (tests/models/test_continuous.py).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from crane_x7_vla.models import decode_attention
from crane_x7_vla.models.batcher import BatchedPrediction, SharedPolicy, _Request
from crane_x7_vla.models.engine import (
    OpenVLAEngine,
    _attend,
    _heads,
    _LayerWeights,
    _mlp_residual,
    _rms_norm,
    _rope,
    capture_graph,
    last_real,
    prefill_layout,
    warmup_frame,
)
from crane_x7_vla.models.processing import ModelInputs

DEFAULT_MAX_PROMPT_TOKENS = 96  # BOS + "In: What action should the robot take to ...?\nOut:" + an instruction


@dataclass
class _Vision:
    """The vision towers of ``k`` admitted prompts (one bucket per k): static input and output, and its graph."""

    pixel_values: Tensor  # [k, C, H, W]
    patches: Tensor  # [k, P, H]
    graph: torch.cuda.CUDAGraph | None = None


@dataclass
class _Admit:
    """Static inputs of the ``k`` prompts admitted at one step (one bucket per (k, text length))."""

    patches: Tensor  # [k, P, H] the prompts' patch embeddings
    input_ids: Tensor  # [k, Lp]
    gather_idx: Tensor  # [k, T]
    key_valid: Tensor  # [k, T]
    positions: Tensor  # [k, T]
    slot_ids: Tensor  # [k] which slots the prompts take
    graph: torch.cuda.CUDAGraph | None = None


@dataclass
class _Running:
    """The host's record of an occupied slot."""

    request: _Request
    admitted: float  # perf_counter at its prefill step
    tokens: int = 0  # produced so far (it finishes at action_dim)
    peak: int = 0  # most rows it shared a step with


@dataclass
class _InFlight:
    """A launched step: the slots it finishes (their rows' tokens copied out behind it) and its end event."""

    finished: list[tuple[int, _Running]] = field(default_factory=list)
    tokens: Tensor | None = None  # [slots, action_dim] on the CPU once the event has passed
    event: torch.cuda.Event | None = None  # None on CPU: the step ran synchronously


_Heads = tuple[Tensor, Tensor, Tensor]


def _mixed_in(xp: Tensor | None, xd: Tensor, rope_p: tuple[Tensor, Tensor] | None, w: _LayerWeights, nh: int,
              nkv: int, hd: int) -> tuple[Tensor, _Heads | None, Tensor]:
    """First half of a decoder layer for ``k`` admitted prompts xp [k,T,H] (or None) and one token per slot
    xd [S,1,H]: the q/k/v GEMM runs once over all k*T + S tokens. Returns the stacked input x [k*T + S, H], the
    prompts' rotated (q, k, v), and the tokens' q/k/v [S, (nh+2nkv)hd] (their RoPE goes with their attention)."""
    s_rows, hidden = xd.shape[0], xd.shape[-1]
    n_p = 0 if xp is None else xp.shape[0] * xp.shape[1]
    x = xd.reshape(s_rows, hidden) if xp is None else torch.cat([xp.reshape(n_p, hidden), xd.reshape(s_rows, hidden)])
    qkv = F.linear(_rms_norm(x, w.ln1, w.eps), w.qkv)
    prompt = None
    if xp is not None:
        assert rope_p is not None
        q, k, v = _heads(qkv[:n_p], xp.shape[0], xp.shape[1], nh, nkv, hd)
        prompt = (*_rope(q, k, *rope_p), v)
    return x, prompt, qkv[n_p:]


def _mixed_out(x: Tensor, prompt: _Heads | None, token_att: Tensor, w: _LayerWeights, nh: int, nkv: int) -> Tensor:
    """Second half: a prompt attends causally to itself (the slots' tokens have attended their own cache rows:
    ``token_att`` [S, nh*hd]); then one o-projection and MLP over all tokens. Returns the layer's output
    [k*T + S, H]."""
    if prompt is None:
        return _mlp_residual(x, token_att, w)
    return _mlp_residual(x, torch.cat([_attend(*prompt, None, nh, nkv).flatten(0, 1), token_att]), w)


class ContinuousBatcher(SharedPolicy):
    """Serve concurrent single-robot requests with continuous batching over an :class:`OpenVLAEngine`.

    ``slots``: how many actions are decoded at once (the number of robots); ``max_prefill``: how many new
    prompts one step admits (more wait for the next step; default ``min(4, slots)``: each costs the step a
    prefill, so admitting all at once would stall the running decodes); ``max_prompt_tokens``: the longest prompt the KV
    cache holds (longer ones are refused at submit). ``start=False`` leaves the worker thread off, for
    driving :meth:`step` by hand; ``pipeline`` (default: on CUDA) keeps the next step queued while the host
    resolves the previous one (see :meth:`step`)."""

    def __init__(self, engine: OpenVLAEngine, *, slots: int = 8, max_prefill: int | None = None,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, unnorm_key: str | None = None,
                 history: int = 2000, start: bool = True, pipeline: bool | None = None) -> None:
        if not isinstance(engine, OpenVLAEngine):
            raise ValueError(f"continuous batching needs an OpenVLAEngine, got {type(engine).__name__}; "
                             "use BatchedPolicy for other policies")
        max_prefill = min(4, slots) if max_prefill is None else max_prefill
        if slots < 1 or not 1 <= max_prefill <= slots:
            raise ValueError(f"need slots >= 1 and 1 <= max_prefill <= slots, got slots={slots}, "
                             f"max_prefill={max_prefill}")
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        m = engine.model
        self.engine = engine
        self.slots = slots
        self.max_prefill = max_prefill
        self.action_dim = m.action_stats(unnorm_key).dim
        self.max_text = engine.text_bucket * math.ceil(max_prompt_tokens / engine.text_bucket)
        self.cache_len = self.max_text + engine.num_patches + self.action_dim  # prompt, decode tokens, scratch
        dev, dt = engine.device, m.dtype
        shape = (slots, engine.num_kv_heads, self.cache_len, engine.head_dim)
        self._k = [torch.zeros(shape, device=dev, dtype=dt) for _ in engine.layers]
        self._v = [torch.zeros(shape, device=dev, dtype=dt) for _ in engine.layers]
        scratch = self.cache_len - 1
        self._cur = torch.zeros(slots, device=dev, dtype=torch.long)  # last token of each slot
        self._pos = torch.zeros(slots, device=dev, dtype=torch.long)  # its position id
        self._col = torch.full((slots,), scratch, device=dev, dtype=torch.long)  # where its K/V go
        self._step = torch.zeros(slots, device=dev, dtype=torch.long)  # index of the token it produces
        self._active = torch.zeros(slots, device=dev, dtype=torch.bool)
        self._valid = torch.zeros(slots, self.cache_len, device=dev, dtype=torch.bool)  # keys each slot sees
        self._out = torch.zeros(slots, self.action_dim, device=dev, dtype=torch.long)  # tokens so far
        self._admits: dict[tuple[int, int], _Admit] = {}
        self._visions: dict[int, _Vision] = {}
        self._decode_graph: torch.cuda.CUDAGraph | None = None
        # Vision runs ahead on its own stream (see _encode), with its own graph pool: its graphs replay while a
        # step's graph runs, so they must not share memory.
        self._vision_stream = torch.cuda.Stream(device=dev) if dev.type == "cuda" else None
        self._vision_pool = torch.cuda.graph_pool_handle() if engine.use_cuda_graphs else None
        self._consumed: torch.cuda.Event | None = None  # the last step's copy of its patch embeddings
        self._callers = threading.local()  # each caller thread's CUDA stream for preprocessing
        # The two halves of a layer are compiled (inductor fuses the norms, RoPE, SiLU and residuals); the K/V
        # cache writes between them stay eager. Inside a compiled function an in-place write into a graph input
        # (or a view of one) is functionalised into a copy of the whole cache (measured: the compiled step's time
        # grew with the cache size, the eager one's did not), which at 8 slots costs more than the fusion saves.
        self._in: Callable[..., tuple[Tensor, _Heads | None, Tensor]] = _mixed_in
        self._out_half: Callable[..., Tensor] = _mixed_out
        if engine.use_cuda_graphs:
            import torch._dynamo.config as dynamo_config

            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 128)
            self._in = torch.compile(_mixed_in, dynamic=False, fullgraph=True)
            self._out_half = torch.compile(_mixed_out, dynamic=False, fullgraph=True)
        self._slot: list[_Running | None] = [None] * slots  # host mirror of the slots
        self._waiting: list[_Request] = []
        self._inflight: _InFlight | None = None
        self._stopping = False
        self.steps_run = 0  # device steps launched
        # Its own graph memory pool: a pool lives as long as graphs captured into it, and the engine's may have none.
        self._pool = torch.cuda.graph_pool_handle() if engine.use_cuda_graphs else None
        self.pipeline = engine.device.type == "cuda" if pipeline is None else pipeline
        super().__init__(engine, unnorm_key=unnorm_key, history=history, thread_name="vla-continuous",
                         start=start)

    # ------------------------------------------------------------------ the policy interface
    def prepare_inputs(self, images: Sequence[Any], instructions: Sequence[str]) -> ModelInputs:
        """Pixels on the device; prompt ids stay on the CPU (the worker lays them out without a device sync)."""
        with self._caller_stream():
            return self.engine.model.prepare_inputs(images, instructions, text_on_device=False)

    def _caller_stream(self) -> contextlib.AbstractContextManager[Any]:
        """On CUDA each caller thread preprocesses on a stream of its own: on the device's default stream its
        frame would queue behind the steps in flight, and so would the vision towers that wait for it."""
        if self._vision_stream is None:
            return contextlib.nullcontext()
        stream = getattr(self._callers, "stream", None)
        if stream is None:
            stream = self._callers.stream = torch.cuda.Stream(device=self.engine.device)
        return torch.cuda.stream(stream)

    def _check(self, inputs: ModelInputs) -> None:
        length = inputs.input_ids.shape[1]
        if length > self.max_text:
            raise ValueError(f"the prompt has {length} tokens, more than this batcher's KV cache holds "
                             f"({self.max_text}); shorten the instruction or raise max_prompt_tokens")

    def warmup(self, instruction: str = "pick up the object") -> None:
        """Capture every step kind for prompts in ``instruction``'s length bucket, before :meth:`start` (a first
        capture compiles and takes seconds; serving would otherwise capture at a robot's first requests), and
        run the preprocessing of a camera frame once.
        Leaves the slots idle and the latency records empty."""
        if self._thread.is_alive():
            raise RuntimeError("warm the batcher up before start(): the worker thread would take the requests")
        inputs = self.prepare_inputs([warmup_frame()], [instruction])  # camera-sized: the GPU resize's set-up
        for k in range(1, self.max_prefill + 1):
            futures = [self.submit(inputs) for _ in range(k)]
            while self._queue.qsize() or not self._idle():
                self.step()
            for f in futures:  # a failed capture fails its requests: say so here, not at serving time
                f.result()
        self._done.clear()

    # ------------------------------------------------------------------ the worker
    def _serve(self) -> None:
        while not (self._stopping and self._idle()):
            self.step(block=True)

    def step(self, block: bool = False) -> int:
        """Launch one engine step (admit waiting requests into free slots, decode the running ones), then resolve
        the requests that the *previous* step finished, which waits for that step's GPU work while this one is
        already queued: the GPU never idles on the host, and at most two steps are in flight (``pipeline``, the
        default on CUDA; otherwise a step's requests are resolved as soon as it has run). With nothing to
        launch, resolve what is in flight; with ``block`` and nothing at all to do, wait for a request.
        Returns how many requests were resolved."""
        busy = any(r is not None for r in self._slot)
        self._pull(block=block and not busy and not self._waiting and self._inflight is None)
        free = [s for s in range(self.slots) if self._slot[s] is None]
        admit = self._waiting[: min(len(free), self.max_prefill)]
        del self._waiting[: len(admit)]
        previous, self._inflight = self._inflight, None
        launched = self._launch_step(admit, free[: len(admit)]) if admit or busy else None
        resolved = 0 if previous is None else self._complete(previous)
        if launched is not None:
            if self.pipeline:
                self._inflight = launched
            else:  # the step has run (CPU): resolve it now, there is nothing to overlap with
                resolved += self._complete(launched)
        return resolved

    def _launch_step(self, admit: list[_Request], new_slots: list[int]) -> _InFlight | None:
        start = time.perf_counter()
        running = [s for s in range(self.slots) if self._slot[s] is not None]
        try:
            self._launch(admit, new_slots)
        except Exception as exc:  # a failing step fails the requests in it, not the worker
            self._fail_slots(running, admit, exc)
            return None
        self.steps_run += 1
        for s, req in zip(new_slots, admit, strict=True):
            self._slot[s] = _Running(req, start)
        rows = len(running) + len(admit)
        done = _InFlight()
        for s in running + new_slots:
            run = self._slot[s]
            assert run is not None
            run.tokens += 1
            run.peak = max(run.peak, rows)
            if run.tokens == self.action_dim:
                done.finished.append((s, run))
                self._slot[s] = None  # free for the next step
        if done.finished:
            # The finished rows' tokens, copied out behind the step (stream order: the next step's prefill
            # overwrites the rows only after this copy). All rows are copied ([slots, action_dim] ids: a few
            # hundred bytes), so no index goes to the device.
            done.tokens = self._out.to("cpu", non_blocking=True) if self._out.is_cuda else self._out.clone()
        if self.engine.device.type == "cuda":
            done.event = torch.cuda.Event()
            done.event.record()
        return done

    def _complete(self, step: _InFlight) -> int:
        """Wait for a launched step and resolve the requests it finished."""
        try:
            if step.event is not None:
                step.event.synchronize()
            if not step.finished:
                return 0
            assert step.tokens is not None
            actions = self.engine.model.decode_actions(step.tokens[[s for s, _ in step.finished]], self.unnorm_key)
        except Exception as exc:
            for _, run in step.finished:
                run.request.future.set_exception(exc)
            return 0
        end = time.perf_counter()
        for (_, run), action in zip(step.finished, actions, strict=True):
            self._resolve(run.request, action, run.peak, run.admitted, end)
        return len(step.finished)

    def _idle(self) -> bool:
        """Nothing waiting, running or in flight."""
        return not self._waiting and self._inflight is None and all(r is None for r in self._slot)

    def _pull(self, block: bool) -> None:
        """Move queued requests to the waiting list (blocking for the first one if asked)."""
        try:
            item = self._queue.get() if block else self._queue.get_nowait()
            while True:
                if item is None:
                    self._stopping = True
                else:
                    self._waiting.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return

    def _fail_slots(self, slots: list[int], admitted: list[_Request], exc: Exception) -> None:
        for s in slots:
            run = self._slot[s]
            if run is not None:
                run.request.future.set_exception(exc)
            self._slot[s] = None
        for req in admitted:
            req.future.set_exception(exc)
        with torch.inference_mode():  # idle rows write to the scratch column
            self._active.zero_()
            self._col.fill_(self.cache_len - 1)

    # ------------------------------------------------------------------ the device step
    def _launch(self, admit: list[_Request], slots: list[int]) -> None:
        eng = self.engine
        with eng._lock, torch.inference_mode():
            a = self._fill(admit, slots) if admit else None
            if a is not None:
                self._encode(admit, a)
            if not eng.use_cuda_graphs:
                self._forward(a)
                return
            graph = self._decode_graph if a is None else a.graph
            if graph is None:
                # Capturing runs the step once (warm-up) and records it without running it: undo the warm-up
                # run's state updates so that the replay below is the step's only effect. (Its K/V writes are
                # rewritten with the same values by the replay; keys past a slot's column stay masked.)
                saved = [t.clone() for t in self._state()]
                graph = capture_graph(lambda: self._forward(a), eng.device, self._pool)
                for t, v in zip(self._state(), saved, strict=True):
                    t.copy_(v)
                if a is None:
                    self._decode_graph = graph
                else:
                    a.graph = graph
            graph.replay()

    def _encode(self, admit: list[_Request], a: _Admit) -> None:
        """The admitted prompts' patch embeddings into ``a.patches``.

        On CUDA the vision towers run on their own stream, as one graph per k, and the step waits only for
        them: they start at once, while the step in flight still runs (the worker queues a step when the one
        before it starts), and fill SMs that the step leaves idle. Inside the step they added ~2.7 ms of
        latency-bound small-batch kernels (H200: a one-prompt step 12.0 -> 9.3 ms). The step copies the output
        into its own buffer, and the next vision run waits for that copy alone."""
        eng, k = self.engine, len(admit)
        side = self._vision_stream
        if side is None:  # CPU: in line
            pix = torch.cat([r.inputs.pixel_values for r in admit]).to(eng.model.dtype)
            a.patches.copy_(eng.patch_embeddings(pix))
            return
        vis = self._visions.get(k)
        if vis is None:
            m = eng.model
            img = m.config.vision_towers[0].image_size
            vis = self._visions[k] = _Vision(
                torch.zeros(k, 3 * len(m.config.vision_towers), img, img, device=eng.device, dtype=m.dtype),
                torch.zeros_like(a.patches))
        for r in admit:  # the callers' preprocessing, on their streams
            if r.ready is not None:
                side.wait_event(r.ready)
        if self._consumed is not None:  # the previous step has copied vis.patches out
            side.wait_event(self._consumed)
        with torch.cuda.stream(side):
            for i, r in enumerate(admit):
                vis.pixel_values[i].copy_(r.inputs.pixel_values[0])
            if not eng.use_cuda_graphs:
                vis.patches.copy_(eng.patch_embeddings(vis.pixel_values))
            else:
                if vis.graph is None:
                    def run() -> None:
                        vis.patches.copy_(eng.patch_embeddings(vis.pixel_values))
                    vis.graph = capture_graph(run, eng.device, self._vision_pool)
                vis.graph.replay()
            encoded = torch.cuda.Event()
            encoded.record(side)
        main = torch.cuda.current_stream(eng.device)
        main.wait_event(encoded)
        a.patches.copy_(vis.patches)
        self._consumed = torch.cuda.Event()
        self._consumed.record(main)

    def _state(self) -> list[Tensor]:
        return [self._cur, self._pos, self._col, self._step, self._active, self._valid, self._out]

    def _fill(self, admit: list[_Request], slots: list[int]) -> _Admit:
        """Copy the admitted prompts (left-padded to one text bucket) into their bucket's static inputs."""
        eng, m = self.engine, self.engine.model
        k = len(admit)
        length = max(r.inputs.input_ids.shape[1] for r in admit)
        lp = eng.text_bucket * math.ceil(length / eng.text_bucket)
        ids = torch.cat([F.pad(r.inputs.input_ids.cpu(), (lp - r.inputs.input_ids.shape[1], 0),
                               value=m.config.pad_token_id) for r in admit])
        am = torch.cat([F.pad(r.inputs.attention_mask.cpu(), (lp - r.inputs.attention_mask.shape[1], 0), value=0)
                        for r in admit])
        gather, valid, positions = prefill_layout(am, eng.num_patches, lp)
        a = self._admits.get((k, lp))
        if a is None:
            dev = eng.device
            hidden = m.language_model.config.hidden_size
            a = _Admit(torch.zeros(k, eng.num_patches, hidden, device=dev, dtype=m.dtype),
                       torch.zeros(k, lp, device=dev, dtype=torch.long), torch.zeros_like(gather, device=dev),
                       torch.zeros_like(valid, device=dev), torch.zeros_like(positions, device=dev),
                       torch.zeros(k, device=dev, dtype=torch.long))
            self._admits[(k, lp)] = a
        for dst, src in ((a.input_ids, ids), (a.gather_idx, gather), (a.key_valid, valid), (a.positions, positions),
                         (a.slot_ids, torch.as_tensor(slots))):
            _upload(dst, src)
        return a

    def _forward(self, a: _Admit | None) -> None:
        """The static step: one decode token for every active slot, plus the admitted prompts' prefills."""
        eng = self.engine
        lm = eng.model.language_model.model
        d, scratch = self.action_dim, self.cache_len - 1
        self._valid.scatter_(1, self._col[:, None], True)  # each slot's new key column
        xd = lm.embed_tokens(self._cur[:, None])  # [S,1,H]
        rope_d = lm.rotary_emb(xd, self._pos[:, None])
        xp = rope_p = None
        t = 0
        if a is not None:
            xp = eng.prefill_sequence(a.patches, a.input_ids, a.gather_idx)  # [k,T,H]
            t = xp.shape[1]
            rope_p = lm.rotary_emb(xp, a.positions)
        nh, nkv, hd = eng.num_heads, eng.num_kv_heads, eng.head_dim
        n_p = 0 if xp is None else xp.shape[0] * t
        # The slots' tokens: RoPE, K/V written at each slot's column and attention over its own cache row, in
        # Triton's two kernels on CUDA (decode_attention), else the same math in torch.
        attend = decode_attention.decode_attention if eng.triton_attention else decode_attention.reference
        cos_d, sin_d = rope_d[0][:, 0], rope_d[1][:, 0]  # [S, hd]
        if a is None and eng.fused_decode_usable(xd[:, 0]):
            # A decode-only step: the engine's fused decode layers, with each slot's own write column.
            xd = eng._fused_decode_trunk(xd[:, 0], cos_d, sin_d, (self._k, self._v), self._col, self._valid)[:, None]
        else:
            for i, w in enumerate(eng.fused):
                x, prompt, qkv_d = self._in(xp, xd, rope_p, w, nh, nkv, hd)
                k_cache, v_cache = self._k[i], self._v[i]
                if prompt is not None:
                    assert a is not None
                    k_cache.narrow(2, 0, t).index_copy_(0, a.slot_ids, prompt[1])
                    v_cache.narrow(2, 0, t).index_copy_(0, a.slot_ids, prompt[2])
                token_att = attend(qkv_d, cos_d, sin_d, k_cache, v_cache, self._col, self._valid, nh, nkv, hd)
                x = self._out_half(x, prompt, token_att, w, nh, nkv)
                xd = x[n_p:].view(xd.shape)
                if xp is not None:
                    xp = x[:n_p].view(xp.shape)
        # Decode rows: record the token of each active slot and advance it; finished slots go idle.
        act = self._active
        tok = eng.greedy_tokens(lm.norm(xd[:, 0]))
        at = self._step.clamp(max=d - 1)[:, None]
        self._out.scatter_(1, at, torch.where(act, tok, self._out.gather(1, at)[:, 0])[:, None])
        self._cur.copy_(torch.where(act, tok, self._cur))
        self._pos.add_(act.long())
        self._step.add_(act.long())
        going = act & (self._step < d)
        self._col.copy_(torch.where(going, self._col + 1, scratch))
        self._active.copy_(going)
        if a is None or xp is None:
            return
        # Admitted prompts: their first token, and their slots' decode state.
        first = eng.greedy_tokens(lm.norm(last_real(xp, a.positions)))
        sl = a.slot_ids
        self._out.index_fill_(0, sl, 0)
        self._out[:, 0].index_copy_(0, sl, first)
        self._cur.index_copy_(0, sl, first)
        self._pos.index_copy_(0, sl, a.positions[:, -1] + 1)
        self._step.index_fill_(0, sl, 1)
        self._active.index_fill_(0, sl, d > 1)
        self._col.index_fill_(0, sl, t if d > 1 else scratch)
        self._valid.index_copy_(0, sl, F.pad(a.key_valid, (0, self.cache_len - t)))


def _upload(dst: Tensor, src: Tensor) -> None:
    """Copy a small CPU tensor into a device buffer without waiting for the GPU (a copy from pageable memory
    waits for the stream: the host would stall on the step in flight). Pinned blocks come from torch's caching
    host allocator, which reuses one only after the copies that read it have run."""
    if dst.is_cuda:
        dst.copy_(src.pin_memory(), non_blocking=True)
    else:
        dst.copy_(src)


__all__ = ["DEFAULT_MAX_PROMPT_TOKENS", "BatchedPrediction", "ContinuousBatcher"]
