"""Task semantics shared by every Lift backend (pure numpy): see :mod:`.pick_place`."""

from crane_x7_vla.lift.tasks.pick_place import (
    ENV_ID,
    INSTRUCTION,
    PICK_PLACE,
    EpisodeSpec,
    PickPlaceTask,
    TaskState,
)
from crane_x7_vla.lift.tasks.registry import get_task, register_task, registered_tasks

__all__ = [
    "ENV_ID",
    "INSTRUCTION",
    "PICK_PLACE",
    "EpisodeSpec",
    "PickPlaceTask",
    "TaskState",
    "get_task",
    "register_task",
    "registered_tasks",
]
