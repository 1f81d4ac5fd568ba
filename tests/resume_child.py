"""A training run for tests/test_resume.py to kill: a small Swin HERBS with dropout and drop path on,
trained into the folder OUT; it resumes from OUT/last.pth when there is one, as a person re-running
``herbs train --resume`` would.

    python tests/resume_child.py OUT [FILE NTH BYTES]

With FILE NTH BYTES it sends itself SIGKILL once BYTES bytes went into its NTH atomic write of
OUT/FILE (``last.pth``, ``best.pth``): a kill in the middle of writing a checkpoint. It prints
``ready`` when it starts training and, when it ends, how many atomic writes it made of each file
(JSON) — what the test picks its kill points from."""
import contextlib
import json
import os
import signal
import sys
from collections import Counter

import herbs
from herbs import data, files, train, weights
from herbs.cli import DEMO_BACKBONE, DEMO_SELECTS

SWIN = dict(DEMO_BACKBONE, drop_path_rate=0.1)  # and the combiner's dropout 0.1: the defaults of `herbs train`
CONFIG = train.TrainConfig(epochs=3, batch_size=4, max_lr=0.01, warmup_batches=2, update_freq=2, num_workers=0)

writes: Counter = Counter()


class KillingFile:
    """A file that kills its process once `budget` bytes were written into it."""

    def __init__(self, f, budget: int):
        self.f, self.budget = f, budget

    def write(self, b) -> int:
        b = memoryview(b).cast("B")
        if len(b) >= self.budget:
            self.f.write(b[:self.budget])
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.budget -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


def counting_writes(kill):
    """atomic_write that counts the writes of each file name, and kills as `kill` (or None) says."""
    real = files.atomic_write

    @contextlib.contextmanager
    def atomic_write(path):
        name = os.path.basename(path)
        writes[name] += 1
        with real(path) as f:
            killing = kill is not None and kill[0] == name and kill[1] == writes[name]
            yield KillingFile(f, kill[2]) if killing else f

    return atomic_write


def main(out: str, kill=None) -> None:
    weights.atomic_write = train.atomic_write = counting_writes(kill)  # the two writers of a run's files
    model = herbs.Model(SWIN, num_classes=3, num_selects=DEMO_SELECTS, fpn_size=32, seed=0)
    last = os.path.join(out, "last.pth")
    train_set = data.SyntheticDataset(3, size=64, n_per_class=3, seed=1)
    val_set = data.SyntheticDataset(3, size=64, n_per_class=2, seed=2)
    print("ready", flush=True)
    train.train(model, train_set, val_set, CONFIG, out_dir=out, resume=last if os.path.exists(last) else None,
                log=lambda s: None)
    print(json.dumps(writes), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], (args[1], int(args[2]), int(args[3])) if len(args) > 1 else None)
