"""Keeping the best N checkpoints of a run, as timm's ``CheckpointSaver(max_history=N)``:
``checkpoint-{epoch}.pth`` for the N best epochs by the run's score (ties: the earlier epoch), next
to ``best.pth`` and ``last.pth``.

The ranking is made from ``metrics.jsonl``, which has every epoch's score: after an epoch the kept set
is recomputed, the epoch's checkpoint is linked in if it earns a place (a hard link to the file just
written, which later writes replace rather than change; a copy where links are not possible) and the
files that dropped out are removed, including those of epochs a resumed run cut from the log.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from typing import Callable, List

from herbs.files import atomic_write

_NAME = re.compile(r"checkpoint-(\d+)\.pth")


def best_epochs(records: List[dict], n: int, score: Callable[[dict], float]) -> List[int]:
    """The epochs of the n best records, best first (a higher score is better; ties: earlier epoch)."""
    ranked = sorted(records, key=lambda r: (-score(r), r["epoch"]))
    return [r["epoch"] for r in ranked[:n]]


def checkpoint_path(out_dir: str, epoch: int) -> str:
    return os.path.join(out_dir, f"checkpoint-{epoch}.pth")


def _duplicate(src: str, dst: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dst)
    try:
        os.link(src, dst)
    except OSError:  # no hard links here: a copy, written atomically
        with open(src, "rb") as f, atomic_write(dst) as out:
            shutil.copyfileobj(f, out)


def keep_best(out_dir: str, records: List[dict], n: int, written: str, epoch: int,
              score: Callable[[dict], float]) -> List[int]:
    """After `epoch`, whose checkpoint is the file `written`: keeps checkpoint-{e}.pth for the n best
    epochs of `records` and removes the others; returns the kept epochs, best first."""
    kept = best_epochs(records, n, score)
    if epoch in kept:
        _duplicate(written, checkpoint_path(out_dir, epoch))
    for name in os.listdir(out_dir):
        match = _NAME.fullmatch(name)
        if match and int(match.group(1)) not in kept:
            os.unlink(os.path.join(out_dir, name))
    return kept
