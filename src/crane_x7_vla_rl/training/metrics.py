"""Metric sinks of a run: ``metrics.jsonl`` (always), TensorBoard and Weights & Biases (optional).

``metrics.jsonl`` is rewritten atomically on every log (it is small: one line per update), so it is never
half-written and a resumed run truncates it back to the checkpoint's update before appending. W&B honours
``WANDB_MODE`` (``offline`` works without network) and ``WANDB_DIR``; its API key is read by wandb itself from
the environment and never passes through here.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from crane_x7_vla.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    def __init__(self, run_dir: Path, *, resume_update: int | None, use_tensorboard: bool, use_wandb: bool,
                 wandb_project: str, wandb_entity: str | None, run_name: str, config: dict[str, Any]) -> None:
        self.path = run_dir / METRICS_FILE
        self.rows: list[dict[str, Any]] = []
        if resume_update is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    if int(row.get("update", 0)) <= resume_update:
                        self.rows.append(row)
        elif self.path.is_file():
            self.path.unlink()  # a fresh run in an old directory starts a fresh log
        self.tb: Any = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError as exc:  # logging must never stop training
                log.warning("TensorBoard disabled (%s); install the 'train' extra", exc)
        self.wandb: Any = None
        if use_wandb:
            try:
                import wandb

                self.wandb = wandb.init(project=wandb_project, entity=wandb_entity, name=run_name,
                                        dir=os.environ.get("WANDB_DIR") or str(run_dir), config=config,
                                        resume="allow")
            except Exception as exc:  # W&B outages or missing login must not kill a training run
                log.warning("W&B disabled: %s (set WANDB_API_KEY, or WANDB_MODE=offline)", exc)

    def log(self, update: int, metrics: dict[str, Any]) -> None:
        row = {"update": update, **{k: _clean(v) for k, v in metrics.items()}}
        self.rows.append(row)
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        step = int(metrics.get("global_step", update))
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({**numeric, "update": update}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
