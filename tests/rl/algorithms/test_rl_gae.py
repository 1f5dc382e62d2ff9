"""GAE against a hand-computed example and against an independent per-episode implementation."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crane_x7_vla_rl.algorithms.gae import compute_gae


def test_hand_computed_terminated_and_truncated() -> None:
    gamma, lam = 0.9, 0.8
    # One env, 3 steps: step0 normal, step1 terminated (no bootstrap), step2 truncated (bootstrap from 10).
    rewards = torch.tensor([[1.0], [2.0], [0.5]])
    values = torch.tensor([[0.5], [1.0], [2.0]])
    next_values = torch.tensor([[1.0], [7.0], [10.0]])
    terminated = torch.tensor([[False], [True], [False]])
    truncated = torch.tensor([[False], [False], [True]])
    adv, ret = compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    d2 = 0.5 + 0.9 * 10.0 - 2.0  # truncated: bootstrap, then stop
    d1 = 2.0 - 1.0  # terminated: the 7.0 must be ignored
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    expected = [d0 + gamma * lam * d1, d1, d2]
    assert torch.allclose(adv[:, 0], torch.tensor(expected))
    assert torch.allclose(ret, adv + values)


def _reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):  # type: ignore[no-untyped-def]
    """Independent implementation: split each column into episodes, A_t = sum_k (gamma lam)^k delta_{t+k}."""
    T, N = len(rewards), len(rewards[0])
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        start = 0
        for t in range(T):
            if terminated[t][n] or truncated[t][n] or t == T - 1:
                ep = range(start, t + 1)
                deltas = {
                    k: rewards[k][n] + (0.0 if terminated[k][n] else gamma * next_values[k][n]) - values[k][n]
                    for k in ep
                }
                for k in ep:
                    adv[k][n] = sum((gamma * lam) ** (j - k) * deltas[j] for j in range(k, t + 1))
                start = t + 1
    return adv


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12), st.integers(1, 4), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1)
)
def test_matches_reference_implementation(T: int, N: int, gamma: float, lam: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    next_values = torch.randn(T, N, generator=g, dtype=torch.float64)
    terminated = torch.rand(T, N, generator=g) < 0.2
    truncated = (torch.rand(T, N, generator=g) < 0.2) & ~terminated
    adv, _ = compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    ref = _reference_gae(rewards.tolist(), values.tolist(), next_values.tolist(), terminated.tolist(),
                         truncated.tolist(), gamma, lam)
    for t in range(T):
        for n in range(N):
            assert math.isclose(adv[t, n].item(), ref[t][n], rel_tol=1e-9, abs_tol=1e-9)


def test_shape_mismatch_is_a_clear_error() -> None:
    x = torch.zeros(3, 2)
    b = torch.zeros(3, 2, dtype=torch.bool)
    try:
        compute_gae(x, x, torch.zeros(3, 1), b, b, 0.9, 0.9)
    except ValueError as exc:
        assert "[T, N]" in str(exc)
    else:
        raise AssertionError("expected ValueError")
