"""The decode step's Triton attention (RoPE + cache write + split-KV attention) computes the engine's math.

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET) in float32,
where they must match the torch reference to float32 rounding; on a CUDA GPU also in bfloat16.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from crane_x7_vla.models import OpenVLA
from crane_x7_vla.models import decode_attention as da
from crane_x7_vla.models.engine import OpenVLAEngine

needs_triton = pytest.mark.skipif(not da.triton_available(), reason="Triton is not installed (dev extra)")


def _case(b: int, nh: int, nkv: int, hd: int, t: int, col: int | list[int], device: str, dtype: torch.dtype,
          seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs; ``col``: one write column for all rows, or one per row (continuous batching's slots)."""
    cols = [col] * b if isinstance(col, int) else col
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 4 * t, (b,), generator=g).float()
    inv = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    emb = torch.cat([pos[:, None] * inv, pos[:, None] * inv], dim=-1)
    valid = torch.rand(b, t, generator=g) < 0.7  # padded prompts leave holes
    for row, c in enumerate(cols):
        valid[row, c] = True
        valid[row, c + 1 :] = False
    case = {"qkv": torch.randn(b, (nh + 2 * nkv) * hd, generator=g), "cos": emb.cos(), "sin": emb.sin(),
            "k": torch.randn(b, nkv, t, hd, generator=g), "v": torch.randn(b, nkv, t, hd, generator=g)}
    out = {k: v.to(device=device, dtype=dtype) for k, v in case.items()}
    out["valid"] = valid.to(device)
    out["col"] = torch.tensor([col] if isinstance(col, int) else col, device=device)
    return out


def _compare(c: dict[str, torch.Tensor], nh: int, nkv: int, hd: int, tol: float, rms: bool = False,
             **kw: int) -> None:
    """``rms``: qkv is given as (qkv * rms) with partial sums of squares whose rms it divides by."""
    k_ref, v_ref, k_got, v_got = c["k"].clone(), c["v"].clone(), c["k"].clone(), c["v"].clone()
    args = (c["cos"], c["sin"])
    want = da.reference(c["qkv"], *args, k_ref, v_ref, c["col"], c["valid"], nh, nkv, hd)
    qkv, extra = c["qkv"], {}
    if rms:  # 3 partial sums whose total over 5 elements gives rms = 0.5 + row, eps included
        b = qkv.shape[0]
        rms_row = 0.5 + torch.arange(b, device=qkv.device, dtype=torch.float32)
        sq = ((rms_row**2 - 1e-5) * 5 / 3)[:, None].expand(b, 3).contiguous()
        qkv = (qkv.float() * rms_row[:, None]).to(qkv.dtype)
        extra = {"rms": (sq, 1e-5, 5)}
    got = da.decode_attention(qkv, *args, k_got, v_got, c["col"], c["valid"], nh, nkv, hd, **extra, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    # The cache holds the rotated key and the value at the write column and is untouched elsewhere.
    torch.testing.assert_close(k_got.float(), k_ref.float(), atol=tol, rtol=0)
    if rms:  # v rescaled: float32 rounding
        torch.testing.assert_close(v_got.float(), v_ref.float(), atol=tol, rtol=0)
    else:
        assert torch.equal(v_got, v_ref)
    assert not torch.equal(k_got, c["k"])


@needs_triton
@pytest.mark.parametrize(
    ("b", "nh", "nkv", "t", "col", "kw"),
    [
        (1, 4, 4, 50, 37, {}),  # default splits: the write column in an inner chunk
        (3, 4, 2, 40, 5, {"splits": 4}),  # grouped K/V heads; the new key in the first chunk
        (2, 2, 2, 37, 36, {"splits": 8, "block_t": 8}),  # the last chunk reaches past T
        (2, 2, 1, 9, 8, {"splits": 1, "block_t": 4}),  # one chunk, several blocks
        (3, 2, 2, 30, [29, 3, 17], {"splits": 4, "block_t": 8}),  # a write column per row (slots)
    ],
)
@pytest.mark.parametrize("rms", [False, True])
def test_kernels_match_the_engine_math(b: int, nh: int, nkv: int, t: int, col: int | list[int],
                                       kw: dict[str, int], rms: bool) -> None:
    _compare(_case(b, nh, nkv, 16, t, col, "cpu" if not torch.cuda.is_available() else "cuda", torch.float32),
             nh, nkv, 16, 1e-5, rms, **kw)


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("splits", [None, 4])
def test_rows_of_one_sequence_see_each_other(splits: int | None) -> None:
    """one_sequence (a draft's verify pass): rows at columns 22, 20, 21 of one cache each see the keys up to
    their own, the others' new ones included, as one token at a time would. The later tokens come first, so
    without the write-only launch the interpreter's in-order programs would read stale keys."""
    nh, nkv, hd, t, cols = 4, 2, 16, 30, [22, 20, 21]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    c = _case(3, nh, nkv, hd, t, cols, device, torch.float32)
    k, v = c["k"][:1].clone(), c["v"][:1].clone()
    valid = torch.arange(t, device=device)[None, :] <= c["col"][:, None]  # causal over one sequence
    want = {}
    for row in sorted(range(3), key=lambda r: cols[r]):  # one token at a time, in order
        want[row] = da.reference(c["qkv"][row : row + 1], c["cos"][row : row + 1], c["sin"][row : row + 1], k, v,
                                 c["col"][row : row + 1], valid[row : row + 1], nh, nkv, hd)
    k_got, v_got = c["k"][:1].clone(), c["v"][:1].clone()
    got = da.decode_attention(c["qkv"], c["cos"], c["sin"], k_got.expand(3, -1, -1, -1), v_got.expand(3, -1, -1, -1),
                              c["col"], valid, nh, nkv, hd, one_sequence=True, splits=splits)
    torch.testing.assert_close(got, torch.cat([want[r] for r in range(3)]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_got, k, atol=1e-5, rtol=0)
    assert torch.equal(v_got, v)
    with pytest.raises(ValueError, match="one_sequence"):
        da.decode_attention(c["qkv"], c["cos"], c["sin"], c["k"], c["v"], c["col"], valid, nh, nkv, hd,
                            one_sequence=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernels_in_bf16_at_openvla_sizes() -> None:
    for b in (1, 8):
        _compare(_case(b, 32, 32, 128, 300, 290, "cuda", torch.bfloat16, seed=b), 32, 32, 128, 2e-2)
    _compare(_case(4, 32, 32, 128, 300, [299, 5, 290, 100], "cuda", torch.bfloat16), 32, 32, 128, 2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_decode_layers_in_bf16_at_openvla_sizes() -> None:
    """Four decode layers of the engine's fused path (no RMSNorm kernels) at openvla-7b's sizes in bf16,
    captured in a CUDA graph, against the engine's eager layer math."""
    from crane_x7_vla.models.engine import _layer_forward, _LayerWeights, fused_decode_layers

    g = torch.Generator(device="cuda").manual_seed(0)
    hid, inter, nh, hd, t = 4096, 11008, 32, 128, 300

    def rand(*shape: int, scale: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(torch.bfloat16)

    layers = [_LayerWeights(rand(hid, scale=0.3) + 1, rand(3 * hid, hid), rand(hid, hid), rand(hid, scale=0.3) + 1,
                            rand(2 * inter, hid), rand(hid, inter), 1e-5) for _ in range(4)]
    c = _case(1, nh, nh, hd, t, 290, "cuda", torch.bfloat16)
    x0 = rand(1, hid, scale=1)

    def fused(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # every layer writes the same cache
        return fused_decode_layers(x0, c["cos"], c["sin"], layers, ([k] * 4, [v] * 4), c["col"], c["valid"], nh, nh,
                                   hd)

    k, v = c["k"].clone(), c["v"].clone()
    fused(k.clone(), v.clone())  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = fused(k, v)
    graph.replay()
    k_ref, v_ref, x, delta = c["k"].clone(), c["v"].clone(), x0[:, None], None
    mask = c["valid"][:, None, None, :]
    for w in layers:
        x, delta = _layer_forward(x, delta, c["cos"][:, None], c["sin"][:, None], w, k_ref, v_ref, c["col"], mask,
                                  nh, nh, hd)
    want = (x + delta)[:, 0].float()
    torch.cuda.synchronize()
    assert (got.float() - want).abs().max() <= 2e-2 * want.abs().max()
    torch.testing.assert_close(k.float(), k_ref.float(), atol=5e-2, rtol=5e-2)


def test_launch_config_keeps_chunks_short_but_not_tiny() -> None:
    assert da.launch_config(1, 32, 304) == (16, 16, 1)  # openvla-7b at batch 1: 512 programs of 19 keys
    assert da.launch_config(8, 32, 304) == (8, 16, 1)  # batch 8: at most 2048 programs
    assert da.launch_config(1, 32, 40) == (2, 16, 1)  # a short cache is not cut below 16 keys per chunk
    assert da.launch_config(1, 32, 10) == (1, 16, 1)


def test_gemv_pipeline_fits_the_devices_shared_memory() -> None:
    from crane_x7_vla.models import decode_linear as dl

    h200, rtx4090 = 232_448, 101_376
    assert dl.fit_pipeline(32, 512, 4, False, 2, h200) == (512, 4)  # the tuned defaults on the H200
    assert dl.fit_pipeline(32, 128, 3, True, 2, h200) == (128, 3)
    assert dl.fit_pipeline(32, 512, 4, False, 4, h200) == (512, 3)  # float32 tiles: one stage fewer
    assert dl.fit_pipeline(32, 512, 4, False, 2, rtx4090) == (512, 2)
    assert dl.fit_pipeline(32, 512, 4, False, 4, rtx4090) == (256, 2)
    assert dl.fit_pipeline(32, 16, 4, True, 4, 1000) == (16, 2)  # never below one MMA K block


def test_bad_shapes_are_named() -> None:
    c = _case(1, 2, 2, 8, 10, 3, "cpu", torch.float32)
    with pytest.raises(ValueError, match="qkv width"):
        da.decode_attention(c["qkv"], c["cos"], c["sin"], c["k"], c["v"], c["col"], c["valid"], 4, 2, 8)
    with pytest.raises(ValueError, match="caches"):
        da.decode_attention(c["qkv"], c["cos"], c["sin"], c["k"][:, :, :5], c["v"], c["col"], c["valid"], 2, 2, 8)


def test_triton_knobs_name_what_they_need(tiny_model: OpenVLA) -> None:
    with pytest.raises(ValueError, match="triton_gemv needs triton_attention"):
        OpenVLAEngine(tiny_model, triton_attention=False, triton_gemv=True)
    with pytest.raises(ValueError, match="triton_fused_norms needs triton_gemv"):
        OpenVLAEngine(tiny_model, triton_attention=True, triton_gemv=False, triton_fused_norms=True)


@pytest.mark.skipif(not (da.triton_available() and os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="the CPU engine runs Triton in its interpreter (on CUDA: test_continuous's graph test)")
@pytest.mark.parametrize("fused_norms", [True, False])  # False: session 11's layer, the bench's A/B baseline
def test_engine_with_triton_decode_kernels_reproduces_the_eager_tokens(tiny_model: OpenVLA,
                                                                  images: list[np.ndarray], fused_norms: bool) -> None:
    from crane_x7_vla.models.generate import _decode_loop

    instructions = ["go", "Place the blue cube on the green plate"]
    lm_head = tiny_model.language_model.lm_head
    with torch.inference_mode():
        toks, _ = _decode_loop(tiny_model, tiny_model.prepare_inputs(images[:2], instructions),
                               tiny_model.action_dim, lambda h: lm_head(h).argmax(dim=-1))
    want = torch.stack(toks, dim=1)
    engine = OpenVLAEngine(tiny_model, max_batch=4, text_bucket=8, triton_attention=True,
                           triton_fused_norms=None if fused_norms else False)
    assert engine._decode_layer == engine._triton_decode_layer and engine.triton_gemv
    # By default fused_decode_layers: five kernels a layer; else _triton_decode_layer with its Triton GEMVs.
    assert engine.triton_fused_norms == fused_norms and engine.triton_qkv == fused_norms
    # Batch 2: prompts of two lengths, the shorter padded after its end, so keys masked mid-cache. One call:
    # the interpreter runs every program of every layer and step in Python.
    got = engine.generate(tiny_model.prepare_inputs(images[:2], instructions), 8)
    assert torch.equal(got, want)
    if fused_norms:  # a draft's verify passes: of one row (the fused Triton layers) and of three (torch layers)
        one = tiny_model.prepare_inputs(images[:1], instructions[:1])
        for right, passes in ((6, {2}), (4, {2, 3, 4})):
            draft = torch.cat([want[0, :right], (want[0, right:] + 1) % tiny_model.language_model.config.vocab_size])
            assert torch.equal(engine.generate(one, 8, draft=draft), want[:1])
            assert engine.last_passes in passes


@needs_triton
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 48), (3, 100, 70), (16, 512, 33)])
def test_gemvs_match_linear_and_swiglu(m: int, k: int, n: int) -> None:
    """decode_linear: neither N nor K a multiple of the blocks (masked tails); with and without the residual,
    and gate/up with the SwiGLU epilogue."""
    from crane_x7_vla.models import decode_linear as dl

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(m)
    x, w, r = (torch.randn(*shape, generator=g).to(device) for shape in ((m, k), (n, k), (m, n)))
    for residual in (None, r):
        got = dl.linear(x, w, residual, block_n=16, block_k=32)
        torch.testing.assert_close(got, dl.reference(x, w, residual), atol=1e-4, rtol=1e-5)
    gate_up = torch.randn(2 * n, k, generator=g).to(device)
    torch.testing.assert_close(dl.swiglu(x, gate_up, block_n=16, block_k=32), dl.reference_swiglu(x, gate_up),
                               atol=1e-3, rtol=1e-4)  # gate * up reaches ~500 at K = 512
    # The RMSNorm between two GEMVs: the first writes its output times the norm's weight and the output's
    # partial sums of squares, the second divides by the rms. Rows of different scales, a weight != 1.
    xs = x * torch.logspace(-2, 2, m, device=device)[:, None]
    ln = torch.rand(k, generator=g).to(device) + 0.5
    w_kk = torch.randn(k, k, generator=g).to(device) * k**-0.5
    h, hg, hsq = dl.linear_norm_out(xs, w_kk, xs, ln, block_n=16, block_k=32)
    torch.testing.assert_close(h, dl.reference(xs, w_kk, xs), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(hg, h * ln)
    assert hsq.shape == (m, -(-k // 16)) and hsq.dtype == torch.float32
    torch.testing.assert_close(hsq.sum(1), h.pow(2).sum(1))
    torch.testing.assert_close(dl.linear(hg, w, r, rms_in=(hsq, 1e-5), block_n=16, block_k=32),
                               dl.reference(h, w, r, (ln, 1e-5)), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(dl.swiglu(hg, gate_up, rms_in=(hsq, 1e-5), block_n=16, block_k=32),
                               dl.reference_swiglu(h, gate_up, (ln, 1e-5)), atol=1e-3, rtol=1e-4)
    # norm_in: the same for an input no GEMV produced (a decode step's embeddings)
    xg, sq = dl.norm_in(xs, ln)
    torch.testing.assert_close(dl.linear(xg, w, rms_in=(sq, 1e-5)), dl.reference(xs, w, norm=(ln, 1e-5)),
                               atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="norm_out must be"):
        dl.linear_norm_out(x, w, None, ln)
    with pytest.raises(ValueError, match="sums of squares must be float32"):
        dl.linear(x, w, rms_in=(hsq.double(), 1e-5))
    with pytest.raises(ValueError, match="residual must be"):
        dl.linear(x, w, r[:, :-1])
    with pytest.raises(ValueError, match="contiguous"):
        dl.linear(x, w.t().contiguous().t())


@pytest.mark.skipif(not (da.triton_available() and os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="the CPU batcher runs Triton in its interpreter (on CUDA: test_continuous's graph test)")
def test_continuous_batcher_with_triton_decode_kernels_matches_the_eager_loop(
        tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    """Slots at different write columns (a per-row column for the kernels), steps with and without prompts
    (decode-only steps take the engine's fused_decode_layers)."""
    from crane_x7_vla.models.continuous import ContinuousBatcher

    instructions = ["go", "pick up the red block"]
    want = np.concatenate([tiny_model.predict_action(images[i : i + 1], instructions[i : i + 1]) for i in range(2)])
    b = ContinuousBatcher(OpenVLAEngine(tiny_model, max_batch=2, text_bucket=8, triton_attention=True), slots=2,
                          max_prefill=1, start=False, pipeline=False)
    first = b.submit(b.prepare_inputs([images[0]], [instructions[0]]))
    b.step()  # request 0: prefill
    b.step()  # decode only
    second = b.submit(b.prepare_inputs([images[1]], [instructions[1]]))
    while not (first.done() and second.done()):
        b.step()
    np.testing.assert_allclose(np.stack([first.result().action, second.result().action]), want, atol=1e-6)
    b.close()


@pytest.mark.skipif(not (da.triton_available() and os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="runs the probe's kernels in Triton's interpreter")
def test_probe_passes_working_kernels_and_names_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the engine probes the kernels first and falls back to torch (with a warning) if they fail."""
    from crane_x7_vla.models import engine

    assert engine._triton_probe(torch.device("cpu"), torch.float32) is None

    def broken(*args: object, **kw: object) -> torch.Tensor:
        raise RuntimeError("no MMA on this GPU")

    monkeypatch.setattr(da, "decode_attention", broken)
    engine._triton_probe.cache_clear()  # one answer per device and dtype
    try:
        assert engine._triton_probe(torch.device("cpu"), torch.float32) == "RuntimeError: no MMA on this GPU"
    finally:
        engine._triton_probe.cache_clear()
