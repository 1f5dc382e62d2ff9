"""Action validation shared by every backend (pure numpy): reject bad actions with a message saying the fix.

Validation happens before a backend touches its simulation, so a rejected action leaves the sim usable.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla.lift.errors import ActionError
from crane_x7_vla.lift.types import ControlMode
from crane_x7_vla.robot import ACTION_DIM, ACTION_LOWER, ACTION_UPPER, JOINT_NAMES

LOWER = np.asarray(ACTION_LOWER, dtype=np.float64)
UPPER = np.asarray(ACTION_UPPER, dtype=np.float64)
# Slack for targets computed in float32 right at a limit (e.g. an unnormalised VLA bin edge).
LIMIT_TOLERANCE = 1e-3
_ACTION_NAMES = (*JOINT_NAMES[:7], JOINT_NAMES[7])


def clip_to_limits(targets: ArrayLike) -> NDArray[np.float64]:
    """Clip (..., 8) joint targets into the joint limits (for policies whose outputs may overshoot)."""
    return np.clip(np.asarray(targets, dtype=np.float64), LOWER, UPPER)


def validate_action(
    action: ArrayLike, num_envs: int, control_mode: ControlMode, qpos: NDArray[np.floating] | None = None
) -> NDArray[np.float64]:
    """Turn an action into (N, 8) absolute joint targets or raise :class:`ActionError`.

    ``pd_joint_pos``: the action is the targets and must lie within the joint limits.
    ``pd_joint_delta_pos``: the action is added to ``qpos`` (N, 8) and the sum is clipped to the limits
    (deltas pushing into a limit are normal), but a single delta beyond the joint range is rejected.
    """
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ActionError(f"action must be numeric, got {type(action).__name__}: {exc}") from exc
    if a.ndim == 1 and num_envs == 1:
        a = a[None]
    if a.shape != (num_envs, ACTION_DIM):
        raise ActionError(
            f"action must have shape ({num_envs}, {ACTION_DIM}) (7 arm joint targets + gripper, rad) "
            f"for num_envs={num_envs}, got {a.shape}"
        )
    bad = ~np.isfinite(a)
    if bad.any():
        env, dim = np.argwhere(bad)[0]
        raise ActionError(f"action has a non-finite value {a[env, dim]} at env {env}, dim {dim} ({_ACTION_NAMES[dim]})")
    if control_mode == "pd_joint_pos":
        targets = a
    elif control_mode == "pd_joint_delta_pos":
        if qpos is None:
            raise ValueError("pd_joint_delta_pos needs the current qpos")
        span = UPPER - LOWER
        over = np.abs(a) > span
        if over.any():
            env, dim = np.argwhere(over)[0]
            raise ActionError(f"delta {a[env, dim]:.4g} for {_ACTION_NAMES[dim]} (env {env}) exceeds the joint's "
                              f"whole range {span[dim]:.4g} rad; deltas are radians per step")
        return clip_to_limits(np.asarray(qpos, dtype=np.float64) + a)
    else:
        raise ActionError(f"unknown control_mode {control_mode!r}; use 'pd_joint_pos' or 'pd_joint_delta_pos'")
    out = (targets < LOWER - LIMIT_TOLERANCE) | (targets > UPPER + LIMIT_TOLERANCE)
    if out.any():
        env, dim = np.argwhere(out)[0]
        raise ActionError(
            f"target {targets[env, dim]:.4f} rad for {_ACTION_NAMES[dim]} (env {env}) is outside its limits "
            f"[{LOWER[dim]:.4f}, {UPPER[dim]:.4f}]; clip it (crane_x7_vla.lift.actions.clip_to_limits)"
        )
    return np.clip(targets, LOWER, UPPER)
