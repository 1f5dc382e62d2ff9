"""On-disk demonstration format (version 1) for supervised warm-starts, with an atomic writer and a reader.

Layout of a dataset directory::

    meta.json               {"format": "crane-x7-vla-demos", "format_version": 1, "env_id", "camera", "fps",
                             "image_size": [H, W], "action_dim": 8, "action_space": "...", "episodes": [...]}
    episode_00000.npz       images (T, H, W, 3) uint8   wrist camera frame seen *before* the action
                            actions (T, 8) float32     7 absolute arm joint targets + finger_a target (rad)
                            qpos (T, 8) float32        measured joints (7 arm + finger_a) at the frame
                            instruction () str, success () bool, seed () int64

One compressed ``.npz`` per episode keeps a partial recording usable and needs only numpy to read. Every file
is written through :mod:`crane_x7_vla.utils.atomic`, and ``meta.json`` (which lists the episodes) is rewritten
after each episode, so a reader never sees a half-written episode even if recording is interrupted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla.robot import ACTION_DIM
from crane_x7_vla.utils.atomic import atomic_path, write_json_atomic

FORMAT = "crane-x7-vla-demos"
FORMAT_VERSION = 1
META = "meta.json"
ACTION_SPACE = "absolute joint targets: 7 arm joints + crane_x7_gripper_finger_a_joint (rad)"


@dataclass
class Episode:
    images: NDArray[np.uint8]  # (T, H, W, 3)
    actions: NDArray[np.float32]  # (T, 8)
    qpos: NDArray[np.float32]  # (T, 8)
    instruction: str
    success: bool
    seed: int

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class Step:
    image: NDArray[np.uint8]  # (H, W, 3)
    action: NDArray[np.float32]  # (8,)
    qpos: NDArray[np.float32]  # (8,)
    instruction: str


class DemoWriter:
    """Append episodes to a dataset directory (created if missing; an existing one must match)."""

    def __init__(self, root: str | Path, env_id: str, camera: str, fps: float, image_size: tuple[int, int]) -> None:
        self.root = Path(root)
        self.meta: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "env_id": env_id, "camera": camera,
            "fps": fps, "image_size": list(image_size), "action_dim": ACTION_DIM, "action_space": ACTION_SPACE,
            "episodes": [],
        }
        if (self.root / META).exists():
            old = read_meta(self.root)
            for key in ("env_id", "camera", "image_size"):
                if old[key] != self.meta[key]:
                    raise ValueError(f"{self.root} holds demos with {key}={old[key]!r}, not {self.meta[key]!r}; "
                                     "record into a new directory")
            self.meta["episodes"] = old["episodes"]
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, episode: Episode) -> Path:
        """Write one episode atomically and list it in meta.json; returns its path."""
        t = len(episode.actions)
        h, w = self.meta["image_size"]
        if episode.images.shape != (t, h, w, 3) or episode.images.dtype != np.uint8:
            raise ValueError(f"images must be ({t}, {h}, {w}, 3) uint8, got {episode.images.shape} {episode.images.dtype}")
        if episode.actions.shape != (t, ACTION_DIM) or episode.qpos.shape != (t, ACTION_DIM):
            raise ValueError(f"actions and qpos must be ({t}, {ACTION_DIM}), got {episode.actions.shape}, {episode.qpos.shape}")
        name = f"episode_{len(self.meta['episodes']):05d}.npz"
        with atomic_path(self.root / name, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, images=episode.images, actions=episode.actions.astype(np.float32),
                qpos=episode.qpos.astype(np.float32), instruction=np.array(episode.instruction),
                success=np.array(bool(episode.success)), seed=np.array(episode.seed, dtype=np.int64),
            )
        self.meta["episodes"].append({"file": name, "length": t, "success": bool(episode.success), "seed": episode.seed})
        write_json_atomic(self.root / META, self.meta)
        return self.root / name


def read_meta(root: str | Path) -> dict[str, Any]:
    path = Path(root) / META
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a demo dataset (record one with crane-x7-vla expert --record DIR)")
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format {meta.get('format')!r} v{meta.get('format_version')}; "
                         f"this reader understands {FORMAT!r} v{FORMAT_VERSION}")
    return meta


class DemoDataset:
    """Read a dataset: ``len()``, ``episode(i)``, iterate ``episodes()`` or flat ``steps()``."""

    def __init__(self, root: str | Path, only_successful: bool = False) -> None:
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.entries = [e for e in self.meta["episodes"] if e["success"] or not only_successful]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_steps(self) -> int:
        return sum(int(e["length"]) for e in self.entries)

    def episode(self, i: int) -> Episode:
        with np.load(self.root / self.entries[i]["file"], allow_pickle=False) as z:
            return Episode(images=z["images"], actions=z["actions"], qpos=z["qpos"],
                           instruction=str(z["instruction"]), success=bool(z["success"]), seed=int(z["seed"]))

    def episodes(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.episode(i)

    def steps(self) -> Iterator[Step]:
        for ep in self.episodes():
            for t in range(len(ep)):
                yield Step(ep.images[t], ep.actions[t], ep.qpos[t], ep.instruction)
