"""A training run for tests/test_distributed.py, started alone or by ``mpiexec -n N``: a small HERBS
(tests/test_resume.py's models, dropout and drop path on) trained on synthetic images into OUT, resuming
from OUT/last.pth when there is one. Each rank saves its final parameters and buffers to
OUT/rank{r}.npz, and rank 0 prints the metrics as one JSON line.

    python tests/distributed_child.py OUT KIND UPDATE_FREQ [SETTING=VALUE ...]

Settings: ``fail=R:S`` makes rank R raise at its S-th train_step call (counted from 1 in this
process), ``kill=R:S`` makes it SIGKILL itself there instead; ``img_size=R:V``, ``classes=R:V`` and
``seed=R:V`` give rank R another image size, class count or seed; ``nan=R:S`` gives rank R's S-th
train_step call images of NaN; ``epochs=E`` trains E epochs (3), ``skip=1`` skips non-finite updates,
``tools=1`` turns on timm's training tools (TOOLS: mixup/cutmix, label smoothing, clipping, an EMA)."""
import json
import os
import signal
import sys

import numpy as np

import herbs
from herbs import data, distributed, train
from herbs.cli import DEMO_BACKBONE, DEMO_SELECTS

MODELS = {
    "swin": (dict(DEMO_BACKBONE, drop_path_rate=0.1), DEMO_SELECTS),
    "resnet": ({"backbone": "resnet", "img_size": 64, "depths": (1, 1, 1, 1), "width": 8}, (100, 24, 6, 2)),
}


TOOLS = dict(smoothing=0.1, mixup=0.8, cutmix=1.0, model_ema=True, model_ema_decay=0.5, clip_grad=0.5)


def ranked(settings: dict, name: str, rank: int, default):
    """The value setting `name` gives this rank ("R:V"), or `default`."""
    if name not in settings:
        return default
    target, value = settings[name].split(":")
    return int(value) if int(target) == rank else default


def failing(step, rank: int, settings: dict):
    """train_step, raising, dying or given NaN images at the call that settings 'fail', 'kill' or 'nan'
    name for this rank."""
    calls = [0]

    def train_step(*args, **kw):
        calls[0] += 1
        if calls[0] == ranked(settings, "fail", rank, 0):
            raise RuntimeError(f"an injected failure at train_step call {calls[0]}")
        if calls[0] == ranked(settings, "kill", rank, 0):
            os.kill(os.getpid(), signal.SIGKILL)
        if calls[0] == ranked(settings, "nan", rank, 0):
            args = (np.full_like(args[0], np.nan),) + args[1:]
        return step(*args, **kw)

    return train_step


def main(out: str, kind: str, update_freq: int, settings: dict) -> None:
    rank = distributed.world().rank
    backbone, selects = MODELS[kind]
    size = ranked(settings, "img_size", rank, 64)
    model = herbs.Model(dict(backbone, img_size=size), num_classes=ranked(settings, "classes", rank, 3),
                        num_selects=selects, fpn_size=32, dropout=0.1, seed=ranked(settings, "seed", rank, 0))
    model.train_step = failing(model.train_step, rank, settings)
    config = train.TrainConfig(epochs=int(settings.get("epochs", 3)), batch_size=2, max_lr=0.01, warmup_batches=2, update_freq=update_freq,
                               num_workers=0, skip_nonfinite=settings.get("skip") == "1",
                               **(TOOLS if settings.get("tools") == "1" else {}))
    train_set = data.SyntheticDataset(3, size=size, n_per_class=3, seed=1)  # 9 images: 4 batches of 2
    val_set = data.SyntheticDataset(3, size=size, n_per_class=2, seed=2)
    last = os.path.join(out, "last.pth")
    history = train.train(model, train_set, val_set, config, out_dir=out,
                          resume=last if os.path.exists(last) else None, log=lambda line: None)
    np.savez(os.path.join(out, f"rank{rank}.npz"), params=model.flat_parameters(),
             **{name: b for name, b in model.named_buffers()})
    if rank == 0:
        print(json.dumps(history), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), dict(arg.split("=", 1) for arg in sys.argv[4:]))
