"""OpenVLA-7B action latency on one GPU: the eager loop vs the static-cache CUDA-graph engine, in one run.

Builds the full openvla-7b architecture with random weights on the GPU (nothing is downloaded; the tokenizer is
built locally with the real id layout, and the prompt's words are single pieces so the prompt has the release's
token count: 25 tokens + the appended "▁", a 288-token prefill with the 256 patches), then measures:
  - batch-1 predict p50/p99 (preprocessing included) for the eager loop and the engine,
  - batch-1 model-only time with a draft of the tokens (the robot's previous action), by how much of it is right,
  - engine throughput (actions/s) at batch 8 and 32,
  - peak GPU memory of the engine at batch 1,
  - token agreement between the engine and the eager loop on the same inputs,
  - N simulated robots (threads, as N inference services) at R Hz each sharing the engine, through
    ``ContinuousBatcher`` (continuous batching, what the service uses) and ``BatchedPolicy`` (synchronous
    batches with a bounded wait, for comparison): achieved rate, p50/p99 latency.
Prints one JSON object.

    python bench/openvla_latency.py [--iters 50] [--robots 8 16] [--rate 10] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crane_x7_vla.models import OpenVLA, load_vla, make_tiny_checkpoint
from crane_x7_vla.models.batcher import BatchedPolicy, SharedPolicy
from crane_x7_vla.models.continuous import ContinuousBatcher
from crane_x7_vla.models.engine import OpenVLAEngine
from crane_x7_vla.models.presets import OPENVLA_7B
from crane_x7_vla.models.tiny import random_openvla

INSTRUCTION = "pick up the red cube and place it on the plate"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn: Any, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - t0)
    return out


def _interleaved(fns: dict[str, Any], iters: int, rounds: int = 5) -> dict[str, list[float]]:
    """Time several variants in alternating rounds, so that drifts of the GPU's clocks over the run fall on
    all of them alike (one variant after another gave A/Bs off by as much as the effect measured)."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name] += _time(fn, max(1, iters // rounds))
    return out


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def _stream(model: OpenVLA, images: list[np.ndarray], iters: int) -> dict[str, Any]:
    """End-to-end batch-1 predict over a stream of frames with the service's default engine (each request
    drafted with the previous action): distinct random frames (the worst case, every frame a new scene) and
    one frame with fresh sensor noise (+-2 levels) each time (a robot at rest). With random weights the share
    of right draft tokens is not a trained policy's: these bound the range, they do not predict a task."""
    engine = OpenVLAEngine(model, max_batch=1)
    engine.warmup(INSTRUCTION)  # as the service does: every pass captured before the first request
    rng = np.random.default_rng(1)
    scenes = {
        "distinct_frames": [images[i % len(images)] for i in range(iters + 1)],
        "noisy_static_frame": [np.clip(images[0].astype(np.int16) + rng.integers(-2, 3, images[0].shape), 0, 255)
                               .astype(np.uint8) for _ in range(iters + 1)],
    }
    out: dict[str, Any] = {}
    for name, frames in scenes.items():
        engine.predict(frames[0:1], [INSTRUCTION])  # the first request of the stream has no draft
        times, passes = [], []
        for f in frames[1:]:
            times += _time(lambda f=f: engine.predict([f], [INSTRUCTION]), 1)
            passes.append(engine.last_passes)
        out[name] = {"ms_p50": _pct(times, 50), "ms_p99": _pct(times, 99), "ms_max": 1e3 * max(times),
                     "passes_mean": float(np.mean(passes)), "passes": dict(sorted(Counter(passes).items()))}
    return out


def _drafted(model: OpenVLA, engine: OpenVLAEngine, inputs: Any, want: torch.Tensor, iters: int) -> dict[str, Any]:
    """Model-only batch-1 time with a draft (generate(..., draft=)), by how much of the draft is right, with
    Jacobi verify passes (all unknown tokens a pass) and with one-token passes; ``none`` is the plain graph.
    Each row: p50 ms, LLM passes, and whether the tokens are the plain graph's (they must be)."""
    d = want.numel()
    wrong = (want + 1) % model.language_model.config.vocab_size
    drafts = {f"right_{j}": torch.cat([want[:j], wrong[j:]]) for j in (d, d - 1, 3, 1, 0)}
    out: dict[str, Any] = {}
    for rows in (16, 1):
        eng = engine if rows == engine.verify_rows else OpenVLAEngine(model, max_batch=1, verify_rows=rows)
        for name, draft in drafts.items():
            if rows == 1 and name in (f"right_{d}", f"right_{d - 1}"):
                continue  # one pass (the prefill) whatever the verify rows
            same = torch.equal(eng.generate(inputs, d, draft=draft)[0], want)  # captures
            ts = _time(lambda eng=eng, draft=draft: eng.generate(inputs, d, draft=draft), iters)
            out[f"{name}_rows{rows}"] = {"ms_p50": _pct(ts, 50), "passes": eng.last_passes, "same_tokens": same}
    ts = _time(lambda: engine.generate(inputs, d), iters)
    out["none"] = {"ms_p50": _pct(ts, 50), "passes": engine.last_passes, "same_tokens": True}
    return out


def build_model(tiny: bool, device: str) -> OpenVLA:
    tmp = Path(tempfile.mkdtemp())
    small = load_vla(make_tiny_checkpoint(tmp / "tiny", action_dim=7), device="cpu")
    if tiny:
        return small.to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model = random_openvla(OPENVLA_7B, small.norm_stats, INSTRUCTION, device=device, dtype=torch.bfloat16)
    return model.eval()


def _shared(kind: str, engine: OpenVLAEngine, robots: int, max_wait_s: float, image: np.ndarray) -> SharedPolicy:
    """The shared policy of ``robots`` robots, with every graph the run can meet captured before timing."""
    if kind == "continuous":
        shared: SharedPolicy = ContinuousBatcher(engine, slots=robots, start=False)
        shared.warmup(INSTRUCTION)  # type: ignore[attr-defined]
        shared.start()
        return shared
    for b in range(1, robots + 1):  # a first capture takes seconds
        engine.predict([image] * b, [INSTRUCTION] * b)
    return BatchedPolicy(engine, max_batch=robots, max_wait_s=max_wait_s)


def _continuous_steps(engine: OpenVLAEngine, slots: int, iters: int) -> dict[str, float]:
    """GPU time (ms, CUDA events) of each continuous-batching step kind with ``slots`` slots: one decode token
    for every slot, plus the prefills of k admitted prompts; and of the vision towers of k prompts, which run
    on their own stream beside the steps. Graph replays only: the host's part is not in it."""
    b = ContinuousBatcher(engine, slots=slots, start=False)
    b.warmup(INSTRUCTION)
    graphs = ({"decode": b._decode_graph} | {f"prefill_{k}": a.graph for (k, _), a in sorted(b._admits.items())}
              | {f"vision_{k}": v.graph for k, v in sorted(b._visions.items())})
    out = {}
    for name, graph in graphs.items():
        if graph is None or not torch.cuda.is_available():
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        for _ in range(iters):
            graph.replay()
        end.record()
        end.synchronize()
        out[f"{name}_ms"] = start.elapsed_time(end) / iters
    b.close()
    return out


def _robots(shared: SharedPolicy, image: np.ndarray, robots: int, rate: float, seconds: float) -> dict[str, Any]:
    """``robots`` threads, each one robot's service calling the shared policy at ``rate`` Hz (phases spread)."""
    lock = threading.Lock()
    latencies: list[float] = []
    sizes: list[int] = []
    first: list[float] = []
    missed = 0
    clock = [0.0]
    # Every robot's first request (its connection) is untimed and reported apart: the robots connect at once,
    # so these queue behind each other's prefills. Timing starts when all have connected.
    connected = threading.Barrier(robots, action=lambda: clock.__setitem__(0, time.perf_counter() + 0.1))

    def robot(i: int) -> None:
        nonlocal missed
        t0 = time.perf_counter()
        shared.predict(image, INSTRUCTION)
        with lock:
            first.append(time.perf_counter() - t0)
        connected.wait()
        start = clock[0]
        period = 1.0 / rate
        t_next = start + i * period / robots
        end = start + seconds
        while t_next < end:
            time.sleep(max(0.0, t_next - time.perf_counter()))
            t0 = time.perf_counter()
            res = shared.predict(image, INSTRUCTION)
            with lock:
                latencies.append(time.perf_counter() - t0)  # preprocessing in the caller's thread included
                sizes.append(res.batch_size)
            t_next += period
            now = time.perf_counter()
            # Late: count it and wait for this robot's next tick of its own clock, as a robot's control loop
            # does. (Until session 12 a late robot re-phased to "now", which lined up every robot that one stall
            # had made late: their next requests all arrived at once.)
            if now > t_next:
                with lock:
                    missed += 1
                t_next += period * math.ceil((now - t_next) / period)

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(robots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    return {
        "robots": robots, "rate_hz_each": rate, "requests": len(latencies),
        "achieved_hz_total": len(latencies) / seconds,
        "latency_ms_p50": _pct(latencies, 50), "latency_ms_p99": _pct(latencies, 99),
        "latency_ms_max": _pct(latencies, 100),
        "mean_batch": statistics.fmean(sizes), "missed_deadlines": missed,
        "first_request_ms_max": _pct(first, 100),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--eager-iters", type=int, default=15)
    ap.add_argument("--robots", type=int, nargs="+", default=[8], help="robot counts to serve (continuous batching)")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--robot-seconds", type=float, default=10.0)
    ap.add_argument("--max-wait-ms", type=float, default=4.0, help="BatchedPolicy's window for company")
    ap.add_argument("--skip-batched", action="store_true", help="leave out the synchronous BatchedPolicy run")
    ap.add_argument("--tiny", action="store_true", help="use the tiny architecture (CPU smoke run)")
    ap.add_argument("--skip-minivla", action="store_true", help="leave out the MiniVLA row")
    ap.add_argument("--b1-only", action="store_true", help="stop after the batch-1 measurements")
    ap.add_argument("--skip-ab", action="store_true", help="leave out the batch-1 A/B variants of the engine")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    model = build_model(args.tiny, device)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(32)]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "arch": "tiny" if args.tiny else "openvla-7b",
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "build_s": build_s, "torch": torch.__version__,
        "prompt_tokens": int(model.prepare_inputs(images[:1], [INSTRUCTION]).input_ids.shape[1]),
    }

    eager = _time(lambda: model.predict_action(images[:1], [INSTRUCTION]), 3 + args.eager_iters)[3:]
    result["eager_b1_ms_p50"], result["eager_b1_ms_p99"] = _pct(eager, 50), _pct(eager, 99)

    # The headline numbers draft nothing: with draft_previous a repeated frame is a right draft (one pass).
    engine = OpenVLAEngine(model, max_batch=32, draft_previous=False)
    result["engine_triton_decode"] = engine.triton_attention  # False if the kernels' probe failed (logged)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine.predict(images[:1], [INSTRUCTION])  # capture
    result["engine_capture_b1_s"] = time.perf_counter() - t0
    fast = _time(lambda: engine.predict(images[:1], [INSTRUCTION]), args.iters)
    result["engine_b1_ms_p50"], result["engine_b1_ms_p99"] = _pct(fast, 50), _pct(fast, 99)
    if device == "cuda":
        result["engine_b1_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    result["speedup_b1_p50"] = result["eager_b1_ms_p50"] / result["engine_b1_ms_p50"]

    # Model-only time (inputs prepared once): what the GPU spends per action. A/Bs over the same weights (the
    # engines' fused weights are views, no copy): vision not compiled, the two towers on one stream, decode
    # attention through SDPA instead of Triton, the GEMVs through cuBLAS, the RMSNorms as kernels of their own
    # (session 11's layer), q/k/v through cuBLAS. Timed in alternating rounds.
    inputs = model.prepare_inputs(images[:1], [INSTRUCTION])
    variants = {"": engine} if args.skip_ab else {
                "": engine,
                "_vision_eager": OpenVLAEngine(model, max_batch=1, compile_vision=False),
                "_towers_serial": OpenVLAEngine(model, max_batch=1, parallel_towers=False),
                "_sdpa_attention": OpenVLAEngine(model, max_batch=1, triton_attention=False, triton_gemv=False),
                "_cublas_gemv": OpenVLAEngine(model, max_batch=1, triton_gemv=False),
                "_unfused_norms": OpenVLAEngine(model, max_batch=1, triton_fused_norms=False),
                "_cublas_qkv": OpenVLAEngine(model, max_batch=1, triton_qkv=False)}
    tokens = {name: e.generate(inputs, model.action_dim) for name, e in variants.items()}  # captures
    times = _interleaved({name: lambda e=e: e.generate(inputs, model.action_dim) for name, e in variants.items()},
                         args.iters)
    for name, ts in times.items():
        result[f"engine_b1_model_only_ms_p50{name}"] = _pct(ts, 50)
    result["variants_same_tokens"] = all(torch.equal(t, tokens[""]) for t in tokens.values())
    del variants
    result["engine_b1_drafts"] = _drafted(model, engine, inputs, tokens[""][0], args.iters)
    result["engine_b1_stream"] = _stream(model, images, args.iters)

    if args.b1_only:
        print(json.dumps(result, indent=2))
        return

    for b in (8, 32):
        ims, ins = images[:b], [INSTRUCTION] * b
        engine.predict(ims, ins)
        ts = _time(lambda ims=ims, ins=ins: engine.predict(ims, ins), max(5, args.iters // 5))
        result[f"engine_b{b}_ms_p50"] = _pct(ts, 50)
        result[f"engine_b{b}_actions_per_s"] = b / float(np.median(ts))
    if device == "cuda":
        result["peak_gb_all"] = torch.cuda.max_memory_allocated() / 1e9

    # The on-device normalisation must equal the CPU path exactly.
    a = model.image_transform.batch(images[:4], device).cpu()
    b = model.image_transform.batch(images[:4], "cpu")
    result["gpu_preprocess_max_abs_diff"] = float((a - b).abs().max())

    # Agreement of greedy tokens (engine vs eager loop) on 16 different inputs.
    from crane_x7_vla.models.generate import _decode_loop

    agree = 0
    lm_head = model.language_model.lm_head
    instructions = [f"{INSTRUCTION} number {i}" for i in range(16)]
    for i in range(16):
        inp = model.prepare_inputs(images[i : i + 1], instructions[i : i + 1])
        with torch.inference_mode():
            toks, _ = _decode_loop(model, inp, model.action_dim, lambda h: lm_head(h).argmax(dim=-1))
        want = torch.stack(toks, dim=1)
        got = engine.generate(inp, model.action_dim)
        agree += int(torch.equal(want, got))
    result["greedy_identical_fraction"] = agree / 16

    wait = args.max_wait_ms / 1e3
    result["continuous_step_gpu"] = {str(n): _continuous_steps(engine, n, args.iters) for n in args.robots}
    result["multi_robot"] = [
        _robots(_shared("continuous", engine, n, wait, images[0]), images[0], n, args.rate, args.robot_seconds)
        for n in args.robots]
    if not args.skip_batched:
        n = args.robots[0]
        result["multi_robot_batched"] = _robots(_shared("batched", engine, n, wait, images[0]), images[0], n,
                                                args.rate, args.robot_seconds)
        result["multi_robot_batched"]["max_wait_ms"] = args.max_wait_ms
    if not (args.tiny or args.skip_minivla):
        del engine, model
        if device == "cuda":
            torch.cuda.empty_cache()
        result["minivla"] = minivla_row(images, device, args.eager_iters)
    print(json.dumps(result, indent=2))


def minivla_row(images: list[np.ndarray], device: str, iters: int) -> dict[str, Any]:
    """MiniVLA (published binning architecture: DINOv2+SigLIP, Qwen2.5-0.5B) with random bf16 weights, eager."""
    from crane_x7_vla.models.minivla import MiniVLA
    from crane_x7_vla.models.minivla_config import MiniVLAConfig
    from crane_x7_vla.models.minivla_tiny import build_qwen_style_tokenizer
    from crane_x7_vla.models.tiny import crane_x7_dataset_statistics

    cfg = MiniVLAConfig.from_dict({"vla": {"base_vlm": "prism-qwen25-extra-dinosiglip-224px+0_5b",
                                           "action_tokenizer": "extra_action_tokenizer",
                                           "image_sequence_len": 1, "use_wrist_image": False}})
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):
            model = MiniVLA(cfg, build_qwen_style_tokenizer(), norm_stats=crane_x7_dataset_statistics(7),
                            unnorm_key="crane_x7")
    finally:
        torch.set_default_dtype(prev)
    model.eval()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    b1 = _time(lambda: model.predict_action(images[:1], [INSTRUCTION]), 3 + iters)[3:]
    row: dict[str, Any] = {
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "eager_b1_ms_p50": _pct(b1, 50), "eager_b1_ms_p99": _pct(b1, 99),
    }
    b8 = _time(lambda: model.predict_action(images[:8], [INSTRUCTION] * 8), 2 + max(3, iters // 3))[2:]
    row["eager_b8_ms_p50"] = _pct(b8, 50)
    row["eager_b8_actions_per_s"] = 8 / float(np.median(b8))
    if device == "cuda":
        row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return row


if __name__ == "__main__":
    main()
