"""The metrics writer: ``metrics.jsonl`` and TensorBoard event files of one run directory."""

from __future__ import annotations

import json
import os

from tensorboardX import SummaryWriter


def parse_line(line: str) -> dict | None:
    """A metrics line, or None for a line cut short by a kill."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and "step" in row and "split" in row else None


def read_metrics(workdir: str) -> list[dict]:
    """The rows of ``workdir/metrics.jsonl`` (lines cut short skipped)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(parse_line, f) if r]


class MetricsWriter:
    """Appends ``{"step", "split", **values}`` lines to ``metrics.jsonl`` and scalars to TensorBoard.

    Opened at ``start_step`` (a resumed run), it first drops what was logged after that step and a
    finished run's ``test`` line, so the file reads as if the run had never stopped. Disabled (all
    methods do nothing) on processes other than 0.
    """

    def __init__(self, workdir: str, start_step: int, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        if os.path.exists(self.path):
            kept = [r for r in read_metrics(workdir)
                    if r["step"] < start_step or (r["step"] == start_step and r["split"] != "test")]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.path)
        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        for k, v in values.items():
            self.writer.add_scalar(f"{split}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
