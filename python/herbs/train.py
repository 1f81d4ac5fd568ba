"""The training loop of the HERBS release (SPEC.md §4–5), in plain Python around
``model.train_step`` and ``optimizer.step`` — readable in one sitting, easy to change.

Per batch: the learning rate comes from the warm-up + cosine schedule; the loss of the batch
is divided by the number of batches in its accumulation group and its gradients accumulate; every
`update_freq` batches (and at the end of an epoch) the optimiser steps and the gradients are
zeroed. The refinement temperature halves every 10 epochs. After each epoch: evaluation on
the validation set, one line in ``metrics.jsonl``, and a checkpoint ``last.pth`` (plus
``best.pth``) written atomically — ``{"model", "optimizer", "epoch", "best", "config"}`` as
the release saves it, readable by ``torch.load``, ``"training_state"``, the model's random
streams (:meth:`herbs.Model.training_state`), and ``"model_args"`` and ``"class_names"``, which
rebuild the model for ``herbs predict``. ``best.pth`` holds no ``"optimizer"``: that state is as
large as the model again (SGD's momentum; AdamW's two moments, twice), and best.pth is what is
evaluated and deployed; ``last.pth`` keeps it, and is what a run resumes from. Resuming from ``last.pth`` continues to the same
bits as an uninterrupted run (with the same thread count): data order and augmentation depend
only on (seed, epoch), dropout and drop path on the saved training state. Before its first epoch
a run removes what a killed run left in its folder: temporary files of half-written checkpoints,
and lines of ``metrics.jsonl`` after the epoch it starts from.

Mixed precision: ``TrainConfig(precision="bf16")`` runs the products of the linear and convolution
layers, forward and backward, and attention's forward, with bf16 operands and fp32 accumulation, as
``torch.autocast("cpu", dtype=torch.bfloat16)`` does; parameters, gradients, the optimiser and
checkpoints stay fp32 (bf16 keeps fp32's exponent range: no loss scaling). The model computes at
that precision for the run, evaluation included, and gets its own back at the end. A resumed run
keeps its checkpoint's precision (``precision=None``, the default) or refuses another.

timm's training tools (:mod:`herbs.tools`: label smoothing, mixup/cutmix, gradient clipping, an EMA of
the weights saved as ``"model_ema"``, the best N checkpoints) are settings of :class:`TrainConfig`, off
by default; every run into a folder also writes ``summary.csv`` and ``curves.png`` from
``metrics.jsonl`` after each epoch.

Non-finite values never reach the parameters: before each update the optimiser checks the
gradients (one pass in C), and the loop also watches each batch's loss and the images the model
refuses. By default a NaN or infinity stops training with :class:`NonFiniteError`, naming the
optimiser step, its batches and their samples, before anything is updated or saved (``last.pth``
keeps the last good epoch); with ``TrainConfig.skip_nonfinite`` that update is skipped instead
(the group's gradients are dropped) and counted in the metrics as ``skipped_batches``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from typing import Callable, Optional

import numpy as np

from herbs import distributed, optim, weights
from herbs.files import atomic_write, remove_stale_temps
from herbs.data import DataLoader, Dataset
from herbs.model import NonFiniteImageError
from herbs.progress import Progress, clock
from herbs.tools import RunTools, TimmOptions


@dataclasses.dataclass
class TrainConfig(TimmOptions):
    """The release's defaults (SPEC.md §4–5); timm's training tools (:class:`herbs.tools.TimmOptions`) off."""

    epochs: int = 80
    batch_size: int = 8
    max_lr: float = 5e-4
    warmup_batches: int = 1500
    update_freq: int = 4
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, Nesterov) or "adamw"
    weight_decay: float = 3e-4
    temperature: float = 64.0
    seed: int = 0
    num_workers: int = 2
    skip_nonfinite: bool = False  # a NaN/inf loss, gradient or image: False stops, True skips that update
    eval_freq: int = 1  # 1: evaluate after every epoch; N > 1: the release's schedule (see evaluates_after)
    # the products' precision in training and evaluation, "fp32" or "bf16" (Model.precision); None: a
    # resumed run's, else fp32
    precision: Optional[str] = None

    def check(self) -> None:
        for name in ("epochs", "batch_size", "update_freq", "eval_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if not self.max_lr > 0 or self.warmup_batches < 0 or not self.temperature > 0:
            raise ValueError("max_lr and temperature must be > 0 and warmup_batches >= 0")
        if self.precision not in (None, "fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        self.check_tools()


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinity (a loss, a gradient, or an image the model refused) with
    ``TrainConfig.skip_nonfinite`` off. Nothing was updated. ``step`` is the optimiser step (counted
    from 1 over the run), ``epoch`` the epoch (from 1), ``indices`` the dataset indices of the samples
    in that step's batches."""

    def __init__(self, message: str, step: int, epoch: int, indices: list):
        super().__init__(message)
        self.step, self.epoch, self.indices = step, epoch, indices


def make_optimizer(model, config: TrainConfig):
    """The optimiser of `config` over the model's flat parameter and gradient blocks."""
    make = optim.SGD if config.optimizer == "sgd" else optim.AdamW
    return make(model.flat_parameters(), model.flat_gradients(), lr=config.max_lr, weight_decay=config.weight_decay)


def _write_checkpoint(path: str, model, optimizer, epoch: int, best: float, config: TrainConfig, extra: dict) -> None:
    """A checkpoint; without the optimizer's state when `optimizer` is None (best.pth)."""
    state = {"optimizer": optimizer.state_dict()} if optimizer is not None else {}
    weights.save_file({"model": model.state_dict(), **state, "epoch": epoch, "best": best,
                       "config": dataclasses.asdict(config), "training_state": model.training_state(), **extra},
                      path, format="torch")


def evaluates_after(epoch: int, epochs: int, eval_freq: int) -> bool:
    """Whether epoch `epoch` (counted from 0) of `epochs` ends with an evaluation (and so may write
    best.pth). With eval_freq 1, every epoch; else the release's schedule: after the first epoch and
    every eval_freq-th, every 2nd from 80% of the run on and every epoch from 90% on."""
    if eval_freq > 1:
        eval_freq = 1 if epoch >= 0.9 * epochs else 2 if epoch >= 0.8 * epochs else eval_freq
    return epoch == 0 or (epoch + 1) % eval_freq == 0


def _warn_long_warmup(config: TrainConfig, batches: int, log: Callable[[str], None]) -> None:
    """Says when warm-up takes half the run or more: the learning rate then stays far below max_lr
    for most of it (the release's 1,500 batches are 4% of its CUB run, and all of a run on 200 images)."""
    warmup = config.warmup_batches
    if warmup * 2 >= batches:
        when = f"at batch {warmup}" if warmup <= batches else "never (warm-up is cut short at the run's end)"
        log(f"warning: warmup_batches {warmup} is {warmup / batches:.0%} of this run's {batches} batches: the "
            f"learning rate reaches max_lr {when}; a run this short wants a smaller one (herbs train --warmup)")


def _epoch_line(record: dict, epochs: int, best: float, seconds: float, eta: float) -> str:
    """One readable line for an epoch's record: loss, validation top-1 of the ensemble (and of the EMA's
    weights, which then rank the epochs), the best so far."""
    line = f"epoch {record['epoch']}/{epochs}: loss {record['loss_total']:.4f}"
    if "val_ensemble" in record:
        ema = f", EMA {100 * record['val_ema_ensemble']:.2f}%" if "val_ema_ensemble" in record else ""
        line += f", val top-1 {100 * record['val_ensemble']:.2f}%{ema} (best {100 * best:.2f}%)"
    line += f", {clock(seconds)} ({record['images_per_second']:.1f} img/s)"
    return line + (f", ETA {clock(eta)}" if record["epoch"] < epochs else "")


def _saved_training_state(saved: dict, path: str, model, steps: int) -> dict:
    """The training state of checkpoint `saved`. One written before herbs saved it gets the state of
    a run that began from a fresh model, `steps` train-mode passes ago, with the model's seed."""
    if "training_state" in saved:
        return saved["training_state"]
    warnings.warn(f"{path} has no training_state (an older herbs wrote it): assuming the run began from a "
                  f"fresh model with seed {model.training_state()['seed']}, dropout and drop path continue "
                  f"from step {steps}; the resumed run equals an uninterrupted one only if that holds")
    return {**model.training_state(), "step": steps}


# TrainConfig fields a resumed run may change without changing its numbers; `epochs` changes the
# cosine schedule after the fact, which a user extending a finished run asks for: said, not refused
_RESUME_FREE = {"num_workers", "skip_nonfinite", "checkpoint_hist"}


def _check_resume_settings(saved: dict, path: str, config: TrainConfig, extra: dict,
                           log: Callable[[str], None]) -> None:
    """Refuses to resume checkpoint `saved` with settings other than its run's (the config, and the
    `checkpoint_extra` entries it saved, e.g. how the model was built and the class names): the
    resumed run would not continue that run, without a word."""
    def same(a, b):  # a checkpoint keeps tuples as lists
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    then, now = saved.get("config") or {}, dataclasses.asdict(config)
    differ = [f"{k} {then[k]!r} in the checkpoint, {now[k]!r} now" for k in now
              if k in then and k not in _RESUME_FREE | {"epochs"} and not same(then[k], now[k])]
    differ += [f"{k} {saved[k]!r} in the checkpoint, {v!r} now" for k, v in extra.items()
               if k in saved and not same(saved[k], v)]
    if differ:
        raise ValueError(f"{path}: cannot resume this run with other settings ({'; '.join(differ)}); give the "
                         f"run's settings, or start a new run")
    if "epochs" in then and then["epochs"] != now["epochs"]:
        log(f"the run had {then['epochs']} epochs, now {now['epochs']}: the learning-rate schedule changes from "
            f"here on, so it differs from a run of either length")


def _clean_run_folder(out_dir: str, epoch: int, log: Callable[[str], None]) -> None:
    """Before a run that continues after `epoch` (0 for a new run): removes the temporary files that
    killed writes of its files left, and cuts metrics.jsonl to epochs 1..epoch (a run killed after
    an epoch's line and before its checkpoint wrote a line that the resumed run writes again)."""
    metrics = os.path.join(out_dir, "metrics.jsonl")
    removed = sum(remove_stale_temps(os.path.join(out_dir, name))
                  for name in ("last.pth", "best.pth", "metrics.jsonl", "summary.csv", "curves.png"))
    if removed:
        log(f"removed {removed} temporary file(s) of writes a killed run left in {out_dir}")
    if not os.path.exists(metrics):
        return
    with open(metrics, "rb") as f:
        lines = f.read().decode("utf-8", "replace").splitlines(keepends=True)
    by_epoch = {}
    for line in lines:  # whole lines of epochs 1..epoch; of two lines of an epoch, the resumed run's (later)
        if line.endswith("\n") and 1 <= _epoch_of(line) <= epoch:
            by_epoch[_epoch_of(line)] = line
    kept = [by_epoch[e] for e in sorted(by_epoch)]
    if kept != lines:
        log(f"metrics.jsonl: {len(lines) - len(kept)} line(s) removed, {len(kept)} kept (epochs up to {epoch})")
        with atomic_write(metrics) as f:
            f.write("".join(kept).encode())


def _epoch_of(line: str) -> int:
    """The epoch of a metrics.jsonl line; 0 for a line that is not one (cut short, say)."""
    try:
        record = json.loads(line)
    except ValueError:
        return 0
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0


def _last_checkpoint(out_dir: Optional[str]) -> str:
    """Where the last good parameters are, for messages."""
    last = os.path.join(out_dir, "last.pth") if out_dir else None
    if last and os.path.exists(last):
        return f"{last} holds the last good epoch"
    return "no checkpoint was written before this"


def train(model, train_set: Dataset, val_set: Optional[Dataset] = None, config: TrainConfig = TrainConfig(),
          out_dir: Optional[str] = None, resume: Optional[str] = None, loss_options: Optional[dict] = None,
          checkpoint_extra: Optional[dict] = None, log: Callable[[str], None] = print,
          on_epoch: Optional[Callable[[dict], None]] = None) -> list:
    """Trains `model` on `train_set`; returns the per-epoch metrics (also in out_dir/metrics.jsonl).

    `loss_options` go to every ``model.train_step`` call (loss weights, for example).
    `resume` is a checkpoint written by this function (out_dir/last.pth): the model's tensors, its
    training state, the optimiser and the epoch are restored from it, and the run continues to the
    same bits as an uninterrupted one. Every checkpoint holds ``model_args`` (the model's
    :attr:`~herbs.Model.model_args`) and ``class_names`` (the training set's classes);
    `checkpoint_extra` entries are saved in every checkpoint too, replacing those of the same name.
    `log` gets a readable line per epoch; `on_epoch` (if given) each epoch's metrics record. A run
    into `out_dir` (new or resumed) removes temporary files left there by killed writes and keeps
    the lines of metrics.jsonl up to the epoch it starts from (none for a new run) before it
    appends its own. Raises :class:`NonFiniteError`
    at a NaN or infinity unless ``config.skip_nonfinite`` (see the module's docstring); an epoch
    whose every update is skipped raises it too.

    Started by ``mpiexec -n N`` (with mpi4py installed) it trains data-parallel on the N ranks
    (:mod:`herbs.distributed`): rank r takes batches r, r+N, ... of each epoch, and gradients are summed
    over the ranks before every update, which is then that of one process with ``update_freq × N``. The
    learning-rate schedule counts batches of all ranks (``warmup_batches`` too), and `config.max_lr` is
    the rate of the global batch ``N × update_freq × batch_size``, as given: to keep the rate per image of
    a run on fewer ranks, scale it with the global batch (the linear rule of Goyal et al., 2017). Only
    rank 0 logs and writes into `out_dir`; every rank reads `resume`. A rank that raises stops all
    ranks (MPI_Abort); settings that differ between ranks raise
    :class:`herbs.distributed.RankMismatchError` on every rank."""
    config.check()
    world, own_precision = distributed.world(), model.precision
    try:
        with world.guard(agreed=(NonFiniteError, distributed.RankMismatchError)):
            return _train(world, model, train_set, val_set, config, out_dir, resume, loss_options or {},
                          checkpoint_extra or {}, log if world.is_main else lambda line: None,
                          on_epoch if world.is_main else None)
    finally:
        model.precision = own_precision


def _train(world: distributed.World, model, train_set: Dataset, val_set: Optional[Dataset], config: TrainConfig,
           out_dir: Optional[str], resume: Optional[str], loss_options: dict, checkpoint_extra: dict,
           log: Callable[[str], None], on_epoch: Optional[Callable[[dict], None]]) -> list:
    loader = DataLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, drop_last=True,
                        num_workers=config.num_workers, shard=world.shard)
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {config.batch_size}"
                         + (f" for each of {world.size} ranks" if world.size > 1 else ""))
    val_loader = DataLoader(val_set, config.batch_size, num_workers=config.num_workers,
                            shard=world.shard) if val_set else None
    batches = len(loader) * world.size  # of an epoch, over all ranks: the schedule's unit
    schedule = optim.cosine_schedule(config.max_lr, batches, config.epochs,
                                     min(config.warmup_batches, batches * config.epochs))
    optimizer = make_optimizer(model, config)
    extra = {"model_args": getattr(model, "model_args", None), "class_names": list(getattr(train_set, "classes", [])),
             **checkpoint_extra}  # a stand-in model of a test may have no model_args
    extra = {k: v for k, v in extra.items() if v}
    start_epoch, best, history = 0, float("-inf"), []
    saved = weights.load_checkpoint(resume) if resume else {}
    if config.precision is None:  # the resumed run's; a checkpoint of an older herbs: fp32
        config = dataclasses.replace(config, precision=(saved.get("config") or {}).get("precision") or "fp32")
    model.precision = config.precision
    if resume:
        if "optimizer" not in saved:
            raise ValueError(f"{resume} holds no optimizer state (best.pth keeps only the model): resume from the "
                             f"run's last.pth")
        _check_resume_settings(saved, resume, config, extra, log)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, best = int(saved["epoch"]), float(saved["best"])
        model.load_training_state(_saved_training_state(saved, resume, model, start_epoch * batches))
        log(f"resumed from {resume} after epoch {start_epoch}")
        world.note_resume(saved, log)
    if world.size > 1:
        world.start(model, optimizer, config, train_set, val_set, start_epoch, loss_options, extra, log)
        extra = {**extra, "ranks": world.size}
    tools = RunTools(model, config)  # after world.start: from the parameters every rank has
    if resume:
        tools.resume(model, saved, resume)
    if out_dir and world.is_main:
        os.makedirs(out_dir, exist_ok=True)
        _clean_run_folder(out_dir, start_epoch, log)
    _warn_long_warmup(config, len(loader) * config.epochs, log)
    run_started = time.perf_counter()

    steps_per_epoch = -(-len(loader) // config.update_freq)
    model.zero_grad()  # each update group ends with a zero_grad, so once is enough
    for epoch in range(start_epoch, config.epochs):
        temperature = optim.temperature(epoch, config.temperature)
        loader.set_epoch(epoch)
        batch_indices = loader._batches(epoch)  # the samples of each batch, for messages
        sums, group, problems, skipped = {}, {}, [], 0
        progress = Progress(len(loader), f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                            stream=world.progress_stream())
        started, epoch_state = time.perf_counter(), model.training_state()
        for i, (images, labels) in enumerate(loader):
            group_start = i - i % config.update_freq
            group_size = min(config.update_freq, len(loader) - group_start)
            losses = {}
            world.start_batch(model, epoch_state, i)
            try:  # mixup/cutmix and label smoothing, drawn per batch of the whole run (over the ranks)
                mixed, targets = tools.targets(images, labels, epoch, i * world.size + world.rank)
                losses = model.train_step(mixed, targets, temperature=temperature,
                                          accumulation_steps=group_size * world.size, **loss_options)
            except NonFiniteImageError as e:  # refused before any compute
                files = ", ".join(train_set.describe(int(batch_indices[i][k])) for k in e.images)
                problems.append(f"batch {i + 1} has NaN or infinite pixels in {files}")
            if losses and not np.isfinite(losses["total"]):
                problems.append(f"batch {i + 1}'s loss is {losses['total']}")
            for name, value in losses.items():
                group[name] = group.get(name, 0.0) + value
            lr = float(schedule[epoch * batches + (i + 1) * world.size - 1])  # of the last batch over the ranks
            if i - group_start + 1 == group_size:  # the group's last batch: update, if all is finite
                world.sum_gradients(model.flat_gradients())
                problems = world.gather([f"rank {world.rank}: {p}" if world.size > 1 else p for p in problems])
                step = epoch * steps_per_epoch + i // config.update_freq + 1
                if not problems:
                    try:
                        tools.before_step(model)  # gradient clipping, of the gradients summed over the ranks
                        optimizer.step(lr=lr)  # checks the gradients first, in C
                        tools.after_step(model, step)  # the EMA
                    except optim.NonFiniteGradientError as e:
                        problems.append(str(e))
                if problems:
                    samples = world.gather(np.concatenate(batch_indices[group_start:i + 1]).tolist())
                    where = (f"optimiser step {step} (epoch {epoch + 1}, batches {group_start + 1}-{i + 1} of "
                             f"{len(loader)}, samples {samples}): {'; '.join(problems)}")
                    if not config.skip_nonfinite:
                        raise NonFiniteError(f"{where}. Nothing was updated; {_last_checkpoint(out_dir)}. "
                                             f"TrainConfig(skip_nonfinite=True) (herbs train --skip-nonfinite) "
                                             f"skips such updates instead.", step, epoch + 1, samples)
                    log(f"skipped {where}")
                    skipped += group_size
                else:
                    for name, value in group.items():
                        sums[name] = sums.get(name, 0.0) + value
                model.zero_grad()
                group, problems = {}, []
            progress.update(1, loss=losses.get("total", float("nan")), lr=lr)
        if skipped == len(loader):
            raise NonFiniteError(f"every update of epoch {epoch + 1} was skipped for NaN or infinite values: the "
                                 f"model itself may hold them; {_last_checkpoint(out_dir)}",
                                 epoch * steps_per_epoch + 1, epoch + 1,
                                 world.gather(np.concatenate(batch_indices).tolist()))
        world.end_epoch(model, epoch_state, len(loader))
        world.average_buffers(model)
        tools.end_rank_epoch(model, world.average_buffers)  # the EMA's BatchNorm statistics too
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "temperature": temperature, "seconds": round(seconds, 3),
                  "images_per_second": round(batches * config.batch_size / seconds, 3),
                  "skipped_batches": skipped * world.size, "lr": lr,
                  **{f"loss_{k}": v / (batches - skipped * world.size) for k, v in world.sum(sums).items()}}
        # not the loader's length: a rank may have no validation batch, and every rank must take part
        evaluated = val_loader is not None and evaluates_after(epoch, config.epochs, config.eval_freq)
        if evaluated:
            record.update({f"val_{k}": v for k, v in world.evaluate(model, val_loader).items()})
            record.update(tools.evaluate_ema(model, lambda: world.evaluate(model, val_loader)))
        history.append(record)
        score = tools.score(record) if evaluated else -record["loss_total"]
        improved = score > best and (evaluated or val_loader is None)  # an epoch without evaluation is not the best
        best = max(best, score) if improved else best
        per_epoch = (time.perf_counter() - run_started) / (epoch + 1 - start_epoch)
        log(_epoch_line(record, config.epochs, best, seconds, per_epoch * (config.epochs - epoch - 1)))
        if on_epoch is not None:
            on_epoch(record)
        if out_dir and world.is_main:
            with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            # best.pth before last.pth: a run killed between the two resumes from the epoch before
            # and writes both again, where the other order could leave best.pth an epoch behind
            entries = {**extra, **tools.checkpoint_entries(model)}  # with the EMA's weights
            if improved:
                _write_checkpoint(os.path.join(out_dir, "best.pth"), model, None, epoch + 1, best, config, entries)
            _write_checkpoint(os.path.join(out_dir, "last.pth"), model, optimizer, epoch + 1, best, config, entries)
            tools.end_epoch(out_dir, epoch + 1, os.path.join(out_dir, "last.pth"))  # summary, plot, best N
    return history
