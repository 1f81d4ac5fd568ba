"""Data-parallel training across processes and machines with MPI (``pip install 'herbs[mpi]'``).

A run started by ``mpiexec -n N`` (MPICH, Open MPI, Intel MPI, or Slurm's ``srun --mpi=pmi2``) is
found from the launcher's environment (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``, ``MV2_COMM_WORLD_SIZE``);
:func:`herbs.train.train` then trains one model on N ranks, as PyTorch's DistributedDataParallel
does, through :func:`world`:

- every rank builds the same model; rank 0's parameters, buffers and optimiser state are broadcast
  at the start, after a check that every rank has the same settings (:class:`RankMismatchError`);
- the epoch's batches of ``batch_size`` images, in the (seed, epoch) order of a single process, are
  dealt round-robin: rank r takes batches r, r+N, r+2N, ... (:class:`herbs.data.DataLoader`'s
  `shard`); the last ``len % N`` batches (fewer than N·batch_size images, different ones each epoch)
  are left out of that epoch, so every rank makes the same number of steps;
- gradients are summed over the ranks by one in-place all-reduce of the flat gradient block before
  each optimiser step, the loss of every batch having been divided by ``N × update_freq``: an update
  is that of the mean over a global batch of ``N × update_freq × batch_size`` images, the same as one
  process with ``update_freq × N`` (up to the order of the sums);
- BatchNorm uses each rank's batch statistics (as DDP and as gradient accumulation do); the running
  statistics are averaged over the ranks after each epoch (timm's ``--dist-bn reduce``);
- rank r's i-th batch draws the dropout and drop-path masks of single-process batch ``i·N + r``;
- evaluation is split the same way and its counts are summed; only rank 0 logs, writes
  ``metrics.jsonl`` and checkpoints.

Faults: an exception on one rank is printed with its rank and ends the whole job (``MPI_Abort``, see
:meth:`World.guard`), where the other ranks would wait in their next collective for ever; a rank that
dies is noticed by the launcher, which ends the others. Checkpoints are written atomically, so a job
ended mid-write leaves the previous one whole. A NaN or infinity stops or skips the update on every
rank alike: each rank's findings are gathered before the decision.

Without a launcher (or with one process) nothing here imports MPI and :func:`world` is a single
process whose collectives do nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import traceback
from typing import Iterator, Mapping, Sequence

import numpy as np

__all__ = ["World", "RankMismatchError", "world", "launched_size", "stop_all"]

# set by the launchers: MPICH/Intel MPI/Slurm PMI, Open MPI, MVAPICH
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class RankMismatchError(ValueError):
    """The ranks of a distributed run were given different settings (image size, class count,
    seed, ...): refused at the start, on every rank."""


def launched_size() -> int:
    """The number of processes the MPI launcher started (1 without a launcher)."""
    for name in _SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


class World:
    """The processes training one model: `rank` of `size`. ``World()`` is a single process, whose
    collectives return their input; ``World(comm)`` spans an mpi4py communicator."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank, self.size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes files."""
        return self.rank == 0

    @property
    def shard(self) -> tuple:
        """``(rank, size)``, the `shard` argument of :class:`herbs.data.DataLoader`."""
        return self.rank, self.size

    # ------------------------------------------------------------------------------------------
    # faults

    @contextlib.contextmanager
    def guard(self, agreed: Sequence[type] = ()) -> Iterator[None]:
        """Stops every rank when the block raises on this one: the error is printed with the rank
        and ``MPI_Abort`` ends the job (the others would otherwise wait in their next collective for
        ever). Errors of the `agreed` types, raised on every rank at once, pass as they are."""
        try:
            yield
        except tuple(agreed):
            raise
        except BaseException as e:
            if self.size == 1:
                raise
            sys.stdout.flush()
            sys.stderr.write(f"herbs: rank {self.rank} of {self.size} failed, stopping every rank: "
                             f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            sys.stderr.flush()
            self.comm.Abort(1)

    def start(self, model, optimizer, config, train_set, val_set, start_epoch: int, loss_options: Mapping,
              checkpoint_extra: Mapping, log) -> None:
        """At the start of a run on several ranks: refuses settings that differ between the ranks
        (:meth:`check_same`: the model's configuration and seed, the training configuration but
        `num_workers`, the datasets' sizes, the epoch it starts from, ...), then gives every rank
        rank 0's parameters, buffers and optimiser state (as DDP broadcasts the model)."""
        from herbs import get_num_threads

        train = {k: v for k, v in dataclasses.asdict(config).items() if k != "num_workers"}
        self.check_same({**{f"model {k}": v for k, v in getattr(model, "config", {}).items()},
                         **{f"training {k}": v for k, v in train.items()},
                         **{f"loss option {k}": v for k, v in loss_options.items()},
                         **{f"checkpoint entry {k}": v for k, v in checkpoint_extra.items()},
                         "training state": model.training_state(), "parameters": model.flat_parameters().size,
                         "training images": len(train_set), "validation images": len(val_set) if val_set else 0,
                         "start epoch": start_epoch})
        self.broadcast([model.flat_parameters(), *(b for _, b in model.named_buffers()), *optimizer.state.values()])
        log(self._threads_note(get_num_threads()))

    def check_same(self, settings: Mapping) -> None:
        """Raises :class:`RankMismatchError` on every rank unless all ranks passed equal `settings`
        (a JSON-able mapping), naming each setting that differs and the ranks' values."""
        if self.size == 1:
            return
        text = {k: json.dumps(v, sort_keys=True, default=str) for k, v in settings.items()}
        every = self.comm.allgather(text)
        differ = []
        for key in sorted(set().union(*every)):
            values = [ranks.get(key, "(missing)") for ranks in every]
            if len(set(values)) > 1:
                differ.append(f"{key}: " + ", ".join(f"rank {r} {v}" for r, v in enumerate(values)))
        if differ:
            raise RankMismatchError("the ranks of this run were given different settings, so they would not "
                                    "train one model: " + "; ".join(differ))

    # ------------------------------------------------------------------------------------------
    # collectives

    def broadcast(self, arrays: Sequence[np.ndarray]) -> None:
        """Copies rank 0's `arrays` (contiguous, in place) to every rank."""
        for array in arrays if self.size > 1 else ():
            self.comm.Bcast(array, root=0)

    def sum_gradients(self, grads: np.ndarray) -> None:
        """Sums the flat gradient block over the ranks, in place: one all-reduce."""
        if self.size > 1:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)

    def gather(self, values: list) -> list:
        """The concatenation of every rank's list `values`, in rank order (small Python objects)."""
        return values if self.size == 1 else [v for part in self.comm.allgather(values) for v in part]

    def sum(self, values: Mapping[str, float]) -> dict:
        """{name: the sum over the ranks}; every rank passes the same names."""
        if self.size == 1:
            return dict(values)
        every = self.comm.allgather(dict(values))
        return {name: sum(part[name] for part in every) for name in every[0]}

    def average_buffers(self, model) -> None:
        """Averages the BatchNorm running statistics over the ranks (timm's ``--dist-bn reduce``); the
        batch counters are rank 0's (the batches of one rank, as DDP's broadcast buffers count them)."""
        if self.size == 1:
            return
        from mpi4py import MPI

        for name, buffer in model.named_buffers():
            if name.endswith("num_batches_tracked"):
                self.comm.Bcast(buffer, root=0)
            else:
                self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
                buffer /= self.size

    def evaluate(self, model, loader) -> dict:
        """The top-1 metrics (:meth:`herbs.evaluate.Evaluation.metrics`) of this rank's share of
        `loader`'s batches, the counts summed over the ranks: the accuracies of the whole set."""
        from herbs import evaluate as evaluation

        if self.size == 1:
            return evaluation.evaluate(model, loader).metrics()
        mine = evaluation.evaluate(model, loader).metrics() if len(loader) else {"count": 0}
        hits = {name: round(v * mine["count"]) for name, v in mine.items() if name != "count"}
        every = self.comm.allgather((mine["count"], hits))
        count = sum(c for c, _ in every)
        names = next(h for c, h in every if c)  # some rank has images: the loader is not empty
        return {"count": count, **{name: sum(h.get(name, 0) for _, h in every) / count for name in names}}

    # ------------------------------------------------------------------------------------------
    # random streams

    def start_batch(self, model, epoch_state: Mapping, batch: int) -> None:
        """Before this rank's `batch`-th batch of an epoch that began at training state
        `epoch_state`: the masks of single-process batch ``batch·size + rank``."""
        if self.size > 1:
            model.load_training_state({**epoch_state, "step": epoch_state["step"] + batch * self.size + self.rank})

    def end_epoch(self, model, epoch_state: Mapping, batches: int) -> None:
        """After an epoch of `batches` batches per rank: the training state of a single process that
        ran all of them."""
        if self.size > 1:
            model.load_training_state({**epoch_state, "step": epoch_state["step"] + batches * self.size})


    def note_resume(self, saved: Mapping, log) -> None:
        """Says when checkpoint `saved` was written by another number of ranks: the global batch changes."""
        then = int(saved.get("ranks", 1))
        if then != self.size:
            log(f"the run had {then} rank(s), now {self.size}: the global batch (ranks × update_freq × batch_size) "
                f"and so the updates differ from here on")

    def progress_stream(self):
        """Where progress bars go: stderr on rank 0 (None: the default), nowhere on the others."""
        return None if self.is_main else _Discard()

    def _threads_note(self, threads: int) -> str:
        """A line on the ranks and threads, with a warning when the ranks on this machine ask for more
        threads than it has cores (OMP_NUM_THREADS unset: OpenMP takes every core in every rank)."""
        from mpi4py import MPI

        machine = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks sharing this one's memory
        local = machine.Get_size()
        machine.Free()
        note = f"data-parallel training on {self.size} ranks × {threads} threads ({local} ranks on this machine)"
        cores = os.cpu_count() or 1
        if local * threads > cores:
            note += (f"; warning: {local} × {threads} threads on {cores} cores oversubscribe them: set "
                     f"OMP_NUM_THREADS={max(cores // local, 1)} for every rank (mpiexec -genv with MPICH, -x with Open MPI)")
        return note


class _Discard:
    """A stream that drops what is written to it."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def stop_all(code: int) -> None:
    """In a run of several processes started by an MPI launcher, ends them all with exit code `code`
    (MPI_Abort), so that none waits for ever in a collective for this one; otherwise returns."""
    if launched_size() > 1:
        world().comm.Abort(code)


def world() -> World:
    """The world of this process: an MPI one when a launcher started more than one process."""
    size = launched_size()
    if size == 1:
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(f"this process is one of {size} started by an MPI launcher, but mpi4py is not installed: "
                           f"pip install 'herbs[mpi]' (or mpi4py for your system's MPI); otherwise each "
                           f"process would train alone into the same files") from None
    return World(MPI.COMM_WORLD)

