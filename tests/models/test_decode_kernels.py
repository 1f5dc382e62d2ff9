"""The decode step's fused Triton kernels compute the eager layer's math.

On CPU they run in Triton's interpreter in float16 (its bfloat16 rounding is not the GPU's: it truncates); on a
CUDA GPU in bfloat16. Shapes are chosen so that neither N nor K is a multiple of the block sizes (masked tails).
"""

from __future__ import annotations

import os

import pytest
import torch

from crane_x7_vla.models import decode_kernels as dk

EPS = 1e-5


def _case(rows: int, k: int, n: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rows * 1000 + k)

    def t(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    return {"x": t(rows, k, scale=3.0), "norm_w": 1 + t(k, scale=0.1), "w": t(n, k, scale=k**-0.5),
            "gate_up": t(2 * n, k, scale=k**-0.5), "h": t(rows, n), "down": t(k, n, scale=n**-0.5),
            "res": t(rows, k)}


def _check_all(c: dict[str, torch.Tensor], tol: float) -> None:
    assert dk.usable(c["x"])
    pairs = [
        (dk.norm_linear(c["x"], c["norm_w"], EPS, c["w"]), dk.reference_norm_linear(c["x"], c["norm_w"], EPS, c["w"])),
        (dk.norm_swiglu(c["x"], c["norm_w"], EPS, c["gate_up"]),
         dk.reference_norm_swiglu(c["x"], c["norm_w"], EPS, c["gate_up"])),
        (dk.linear_residual(c["h"], c["down"], c["res"]), dk.reference_linear_residual(c["h"], c["down"], c["res"])),
    ]
    for got, want in pairs:
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
        # Only the summation order differs from the reference GEMM: nearly every element is bit-identical.
        assert (got == want).float().mean() > 0.9


@pytest.fixture
def interpreter() -> None:
    if not dk.triton_available():
        pytest.skip("Triton is not installed (it comes with the dev extra)")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a GPU machine: the kernels are tested on the GPU (tests/conftest.py sets the interpreter)")


@pytest.mark.parametrize("rows", [1, 3, dk.MAX_ROWS])
def test_kernels_in_the_interpreter(interpreter: None, rows: int) -> None:
    _check_all(_case(rows, k=200, n=72, dtype=torch.float16, device="cpu"), tol=2e-3)


def test_config_blocks_are_honoured(interpreter: None) -> None:
    c = _case(2, k=300, n=40, dtype=torch.float16, device="cpu")
    want = dk.reference_norm_linear(c["x"], c["norm_w"], EPS, c["w"])
    for cfg in (dk.Config(16, 128), dk.Config(32, 64), dk.Config(64, 256)):
        torch.testing.assert_close(dk.norm_linear(c["x"], c["norm_w"], EPS, c["w"], cfg).float(), want.float(),
                                   rtol=2e-3, atol=2e-3)


def test_fallback_to_torch_where_the_kernels_do_not_apply(interpreter: None) -> None:
    c = _case(dk.MAX_ROWS + 1, k=64, n=32, dtype=torch.float16, device="cpu")
    assert not dk.usable(c["x"])  # too many rows: the reference ops (cuBLAS on a GPU), bit for bit
    assert torch.equal(dk.norm_linear(c["x"], c["norm_w"], EPS, c["w"]),
                       dk.reference_norm_linear(c["x"], c["norm_w"], EPS, c["w"]))
    x32 = c["x"][:2].float()
    assert not dk.usable(x32)  # float32: no kernel
    assert torch.equal(dk.linear_residual(x32, c["w"].float(), x32[:, :32]),
                       dk.reference_linear_residual(x32, c["w"].float(), x32[:, :32]))


def test_bad_weight_layout_is_named(interpreter: None) -> None:
    c = _case(1, k=64, n=32, dtype=torch.float16, device="cpu")
    with pytest.raises(ValueError, match="contiguous weight"):
        dk.norm_linear(c["x"], c["norm_w"], EPS, c["w"].T.contiguous().T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 8, dk.MAX_ROWS])
def test_kernels_on_the_gpu_in_bfloat16(rows: int) -> None:
    if not dk.triton_available():
        pytest.skip("no Triton")
    _check_all(_case(rows, k=4096 + 72, n=1000, dtype=torch.bfloat16, device="cuda"), tol=3e-2)
