"""A small registry of task definitions keyed by versioned env id (e.g. ``"PickPlace-CRANE-X7"``)."""

from __future__ import annotations

import difflib
from typing import Protocol, TypeVar


class Task(Protocol):
    @property
    def env_id(self) -> str: ...

    @property
    def instruction(self) -> str: ...


T = TypeVar("T", bound=Task)
_TASKS: dict[str, Task] = {}


def register_task(task: T) -> T:
    """Register ``task`` under ``task.env_id`` (re-registering the same id replaces it)."""
    _TASKS[task.env_id] = task
    return task


def get_task(env_id: str) -> Task:
    """The task registered as ``env_id``; a typo gets a "did you mean" hint."""
    # Import here so the built-in tasks register themselves on first lookup.
    from crane_x7_vla.lift.tasks import pick_place  # noqa: F401

    if env_id not in _TASKS:
        close = difflib.get_close_matches(env_id, list(_TASKS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown env_id {env_id!r}; registered: {sorted(_TASKS)}.{hint}")
    return _TASKS[env_id]


def registered_tasks() -> list[str]:
    from crane_x7_vla.lift.tasks import pick_place  # noqa: F401

    return sorted(_TASKS)
