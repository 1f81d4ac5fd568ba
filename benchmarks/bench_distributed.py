"""Data-parallel training on MPI (herbs.distributed): what the all-reduce costs, measured here and
projected to a cluster.

1. all-reduce: the time of one in-place MPI Allreduce (sum) of each model's gradient block (Swin-T 224,
   ResNet-50 448 — the release's size —, Swin-L 384, 200 classes) between 2 ranks of this machine;
2. step: one optimiser step of Swin-T 224 with a global batch of 8, as ``herbs.train.train`` makes it
   (train_step, all-reduce, SGD update), on 1 rank × 2 threads against 2 ranks × 1 thread (batch 4 each):
   the compute and the all-reduce timed apart;
3. projection: the step time and scaling efficiency of N ranks with a fixed batch per rank (weak
   scaling), ``T(N) = T_compute + 2·(N−1)/N · bytes / bandwidth + 2·(N−1) · latency`` — a ring
   all-reduce moves 2·(N−1)/N of the block per rank in 2·(N−1) messages, not overlapped with the
   backward — for the stated networks and per-rank compute: a rank is one machine or socket of
   ``--rank-cores`` cores training at the README's herbs rates on 2 cores of a quiet AMD EPYC Zen 4
   (bench_herbs.py: Swin-T 224 4.22 img/s, ResNet-50 0.60 img/s at 224 so ~0.15 at 448, Swin-L 384
   0.27 img/s) times cores / 2 (linear in cores: optimistic for compute, so pessimistic for the
   efficiency).

Needs ``pip install '.[mpi]'`` (mpi4py and MPICH); starts ``mpiexec`` itself:

    python benchmarks/bench_distributed.py                # ~2 min on 2 cores
    python benchmarks/bench_distributed.py --project-only # the projection alone (builds the models for their sizes)
    python benchmarks/bench_distributed.py --steps 2 --bandwidth-gbit 25 --rank-cores 64
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import load, machine  # noqa: E402

MODELS = {  # name: (backbone, herbs training images/s on 2 cores, README; ResNet-50 at 448 ~ 1/4 of 224's)
    "Swin-T 224": ("swin_tiny_patch4_window7_224", 4.22),
    "ResNet-50 448": ("resnet50", 0.60 / 4),
    "Swin-L 384": ("swin_large_patch4_window12_384", 0.27),
}
STEP_MODEL, GLOBAL_BATCH, CLASSES = "swin_tiny_patch4_window7_224", 8, 200


def block_sizes():
    """{model name: floats in its gradient block} (builds each model once)."""
    import herbs

    sizes = {}
    for name, (backbone, _) in MODELS.items():
        model = herbs.Model(backbone, num_classes=CLASSES)
        sizes[name] = int(model.flat_gradients().size)
        del model
    return sizes


def worker_allreduce(sizes, repeats):
    """Median seconds of an Allreduce of each block; rank 0 prints them as JSON."""
    import numpy as np
    from mpi4py import MPI
    from herbs import distributed

    world = distributed.World(MPI.COMM_WORLD)
    times = {}
    for name, size in sizes.items():
        block = np.ones(size, np.float32)
        runs = []
        for _ in range(repeats + 1):  # the first touches the memory
            world.comm.Barrier()
            t0 = time.perf_counter()
            world.sum_gradients(block)
            runs.append(time.perf_counter() - t0)
        times[name] = sorted(runs[1:])[len(runs[1:]) // 2]
        del block
    if world.is_main:
        print(json.dumps(times))


def worker_step(steps):
    """Median seconds of the compute (train_step) and the all-reduce of an optimiser step over a global
    batch of GLOBAL_BATCH images split among the ranks; rank 0 prints them as JSON."""
    import numpy as np
    from mpi4py import MPI
    import herbs
    from herbs import distributed, optim

    world = distributed.World(MPI.COMM_WORLD)  # also with one rank, which then reduces nothing
    model = herbs.Model(STEP_MODEL, num_classes=CLASSES, seed=0)
    optimizer = optim.SGD(model.flat_parameters(), model.flat_gradients(), lr=1e-4)
    rng = np.random.default_rng(world.rank)
    batch = GLOBAL_BATCH // world.size
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch)
    compute, reduce, total = [], [], []
    for _ in range(steps + 1):  # the first sizes the arenas
        world.comm.Barrier()
        t0 = time.perf_counter()
        model.train_step(x, y, accumulation_steps=world.size)
        t1 = time.perf_counter()
        world.sum_gradients(model.flat_gradients())
        t2 = time.perf_counter()
        optimizer.step()
        model.zero_grad()
        compute.append(t1 - t0), reduce.append(t2 - t1), total.append(time.perf_counter() - t0)
    median = lambda values: sorted(values[1:])[len(values[1:]) // 2]  # noqa: E731
    every = world.comm.gather((median(compute), median(reduce), median(total)), root=0)
    if world.is_main:  # the slowest rank sets the pace
        print(json.dumps({"ranks": world.size, "threads": herbs.get_num_threads(),
                          "compute": max(c for c, _, _ in every), "allreduce": max(r for _, r, _ in every),
                          "step": max(t for _, _, t in every)}))


def mpiexec(ranks, threads, *args):
    """The JSON line a worker run under mpiexec prints."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "python"))
    command = [shutil.which("mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def projection(sizes, a):
    """Prints step time and scaling efficiency against the number of ranks."""
    latency = a.latency_us * 1e-6
    print(f"\nprojection: step time and efficiency (compute / step) of N ranks, one rank = {a.rank_cores} cores "
          f"at the README's rates per core; latency {a.latency_us:g} µs; fp32 gradients; fixed batch per rank")
    ranks = [2, 4, 8, 16, 64]
    for gbit in a.bandwidth_gbit:
        for per_rank in (8, 32):  # batch 8 × update_freq 1, and the release's batch 8 × update_freq 4
            print(f"\n{gbit:g} Gbit/s, {per_rank} images per rank per step (batch 8 × update_freq {per_rank // 8})")
            print(f"{'model':<15} {'block MB':>9} {'compute s':>10} " + " ".join(f"{'N=' + str(n):>14}" for n in ranks))
            for name, (_, rate) in MODELS.items():
                block = sizes[name] * 4
                compute = per_rank / (rate * a.rank_cores / 2)
                cells = []
                for n in ranks:
                    comm = 2 * (n - 1) / n * block / (gbit * 1e9 / 8) + 2 * (n - 1) * latency
                    cells.append(f"{compute + comm:6.2f}s {100 * compute / (compute + comm):4.0f}%")
                print(f"{name:<15} {block / 1e6:9.0f} {compute:10.2f} " + " ".join(f"{c:>14}" for c in cells))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="all-reduces timed per block")
    p.add_argument("--steps", type=int, default=3, help="optimiser steps timed per layout")
    p.add_argument("--bandwidth-gbit", type=float, nargs="+", default=[10.0, 100.0],
                   help="network bandwidths per rank to project for (10 GbE, 100 Gbit/s InfiniBand)")
    p.add_argument("--latency-us", type=float, default=20.0, help="one message's latency")
    p.add_argument("--rank-cores", type=int, default=32, help="cores of one rank in the projection")
    p.add_argument("--project-only", action="store_true", help="skip the measurements")
    p.add_argument("--worker", choices=["allreduce", "step"], help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "allreduce":
        return worker_allreduce(json.loads(a.sizes), a.repeats)
    if a.worker == "step":
        return worker_step(a.steps)
    if shutil.which("mpiexec") is None:
        raise SystemExit("needs mpiexec and mpi4py: pip install '.[mpi]'")
    print(f"{machine()}; load {load()}")
    sys.path.insert(0, str(ROOT / "python"))
    sizes = block_sizes()
    if a.project_only:
        return projection(sizes, a)
    reduced = mpiexec(2, 1, "--worker", "allreduce", "--sizes", json.dumps(sizes), "--repeats", str(a.repeats))
    print("\nall-reduce of the gradient block (fp32, sum, in place), 2 ranks on this machine (shared memory)")
    print(f"{'model':<15} {'floats':>12} {'MB':>7} {'seconds':>8} {'GB/s moved':>11}")
    for name, size in sizes.items():  # a 2-rank ring moves the whole block once per rank
        print(f"{name:<15} {size:12,d} {size * 4 / 1e6:7.0f} {reduced[name]:8.3f} {size * 4 / 1e9 / reduced[name]:11.2f}")
    print(f"\none optimiser step of Swin-T 224, global batch {GLOBAL_BATCH} (median of {a.steps} after a warm-up)")
    print("(wait+all-reduce: from the end of this rank's compute to the end of the sum, so it holds the wait for the "
          "slower rank)")
    print(f"{'layout':<18} {'compute s':>10} {'wait+all-reduce s':>18} {'step s':>8} {'images/s':>9}")
    runs = [mpiexec(1, 2, "--worker", "step", "--steps", str(a.steps)),
            mpiexec(2, 1, "--worker", "step", "--steps", str(a.steps))]
    for run in runs:
        layout = f"{run['ranks']} rank × {run['threads']} thr"
        print(f"{layout:<18} {run['compute']:10.3f} {run['allreduce']:18.3f} {run['step']:8.3f} "
              f"{GLOBAL_BATCH / run['step']:9.2f}")
    projection(sizes, a)


if __name__ == "__main__":
    main()
