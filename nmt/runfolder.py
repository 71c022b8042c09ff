"""The checkpoint files of a training run folder: snapshot names, the best, pruning, averaging.

last.pt            full training state, rewritten atomically at every validation
ckpt-<step>.pt     weights snapshots: the last `keep_last` and the best `keep_best`
best.pt            a copy of the snapshot with the best validation BLEU
averaged.pt        the average of the newest snapshots (train.average_last)
checkpoints.json   index of the snapshots and their BLEU
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from nmt.checkpoint import (
    Checkpoint,
    CheckpointError,
    average_checkpoints,
    copy_atomic,
    save_checkpoint,
)
from nmt.files import write_json_atomic


@dataclass(frozen=True)
class Snapshot:
    path: str  # file name inside the run folder
    step: int
    bleu: float


class RunFolder:
    """One run's checkpoint files; `snapshots` is saved with the training state for resume."""

    def __init__(self, path: str | Path, snapshots: list[Snapshot] | None = None) -> None:
        self.path = Path(path)
        self.snapshots = list(snapshots or [])

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def averaged(self) -> Path:
        return self.path / "averaged.pt"

    @property
    def index(self) -> Path:
        return self.path / "checkpoints.json"

    def add_snapshot(
        self, checkpoint: Checkpoint, bleu: float, improved: bool, keep_last: int, keep_best: int
    ) -> None:
        """Write ckpt-<step>.pt (and best.pt if `improved`), prune, rewrite the index."""
        snapshot = Snapshot(f"ckpt-{checkpoint.step}.pt", checkpoint.step, bleu)
        save_checkpoint(checkpoint.for_translation(), self.path / snapshot.path)
        self.snapshots.append(snapshot)
        if improved:
            copy_atomic(self.path / snapshot.path, self.best)
        self._prune(keep_last, keep_best)
        write_json_atomic(self.index, [asdict(s) for s in self.snapshots])

    def _prune(self, keep_last: int, keep_best: int) -> None:
        """Keep the last `keep_last` snapshots and the `keep_best` best by BLEU."""
        keep = {s.path for s in self.snapshots[-keep_last:]}
        keep |= {s.path for s in sorted(self.snapshots, key=lambda s: -s.bleu)[:keep_best]}
        for s in self.snapshots:
            if s.path not in keep:
                (self.path / s.path).unlink(missing_ok=True)
        self.snapshots = [s for s in self.snapshots if s.path in keep]

    def select(self, last: int | None = None, best: int | None = None) -> list[Path]:
        """The `last` newest or the `best` best-BLEU snapshots, in step order."""
        snaps = self.snapshots or read_index(self.index)
        if best:
            chosen = sorted(snaps, key=lambda s: -s.bleu)[:best]
        else:
            chosen = sorted(snaps, key=lambda s: s.step)[-(last or len(snaps)) :]
        return [self.path / s.path for s in sorted(chosen, key=lambda s: s.step)]

    def average_last(self, count: int) -> Checkpoint:
        """The weight average of the newest `count` snapshots (not yet written)."""
        return average_checkpoints(list(self.select(last=count)))


def read_index(index: Path) -> list[Snapshot]:
    if not index.is_file():
        raise CheckpointError(f"no {index.name} in {index.parent}: is it a run folder?")
    return [
        Snapshot(str(s["path"]), int(s["step"]), float(s["bleu"]))
        for s in json.loads(index.read_text())
    ]


def snapshots_of_run(
    run_dir: str | Path, last: int | None = None, best: int | None = None
) -> list[Path]:
    """The `last` newest or `best` best-BLEU snapshots listed in a run's checkpoints.json."""
    return RunFolder(run_dir).select(last=last, best=best)
