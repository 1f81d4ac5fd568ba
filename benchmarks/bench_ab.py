"""Two builds of herbs on one workload, alternated: did a change make the engine faster?

On a shared machine of few cores the time of one forward moves by 5-10% from one run to the next,
more than most single changes gain; a figure measured before a change and one measured after say
nothing about it. This script builds both sides (git revisions, built once into a cache, or the
package directory of a build at hand), then runs them in turns, each round a fresh subprocess per
side with the order reversed every other round, and prints each side's times and the ratio of the
two per round: a change is real when the per-round ratios agree in sign.

    python benchmarks/bench_ab.py --a 786ae85 --b .            # the working tree against a revision
    python benchmarks/bench_ab.py --a HEAD~1 --b HEAD --threads 1 --batches 1,8 --rounds 8

One thread is the steadier measure here (a neighbour's work on the other core does not stop ours at
every barrier); two threads are what users get. Workload: herbs.Model.predict (the eval-mode forward and the
ensemble; default the HERBS Swin-T 224 with 200 classes) at a precision, or with --train one training step
(forward, HERBS objective, backward, SGD) in train mode.
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

from common import model_step

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("HERBS_AB_CACHE", pathlib.Path.home() / ".cache" / "herbs-ab"))


def git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def package_dir(side):
    """A directory whose `herbs` is the side's built package: `.` the working tree (built in place
    beforehand), another directory as given, else a git revision built into the cache."""
    if side == ".":
        return ROOT / "python"
    if os.path.isdir(side) and os.path.isdir(os.path.join(side, "herbs")):
        return pathlib.Path(side)
    sha = git("rev-parse", "--verify", side + "^{commit}")
    target = CACHE / sha
    if (target / "python" / "herbs").is_dir() and list((target / "python" / "herbs").glob("_C*.so")):
        return target / "python"
    print(f"building {side} ({sha[:10]}) into {target}", file=sys.stderr)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", str(os.cpu_count() or 1)],
                   cwd=target, check=True, capture_output=True)
    for built in target.glob("herbs/_C*.so"):  # --inplace puts it beside setup.py's package_dir
        shutil.move(str(built), target / "python" / "herbs" / built.name)
    if not list((target / "python" / "herbs").glob("_C*.so")):
        raise SystemExit(f"building {side} gave no extension in {target}")
    return target / "python"


def child(args):
    """One side, one round: the times of `repeats` calls after one untimed call, as JSON."""
    import numpy as np

    import herbs
    model = herbs.Model(args.model, num_classes=args.classes, img_size=args.img_size, seed=0,
                        precision=args.precision)
    rng = np.random.default_rng(0)
    out = {}
    for batch in args.batches:
        x = rng.standard_normal((batch, 3, args.img_size, args.img_size)).astype(np.float32)
        step = model_step(model, x, args.classes, args.train, rng)
        step()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out[str(batch)] = times
    print(json.dumps(out))


def run_side(path, args):
    env = dict(os.environ, PYTHONPATH=str(path), OMP_NUM_THREADS=str(args.threads))
    command = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model, "--classes",
               str(args.classes), "--img-size", str(args.img_size), "--precision", args.precision, "--batches",
               ",".join(map(str, args.batches)), "--repeats", str(args.repeats)] + (["--train"] if args.train else [])
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the side at {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="HEAD", help="the first side: a git revision, '.', or a directory holding herbs")
    p.add_argument("--b", default=".", help="the second side (default '.', the working tree, built in place)")
    p.add_argument("--model", default="swin_tiny_patch4_window7_224")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=4, help="timed calls per side, batch and round")
    p.add_argument("--train", action="store_true", help="time a training step instead of a prediction")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    paths = {"A": package_dir(args.a), "B": package_dir(args.b)}
    what = f"{'train step' if args.train else 'predict'} of {args.model} {args.img_size}, {args.precision}"
    print(f"A = {args.a} ({paths['A']}), B = {args.b} ({paths['B']}); {what}; {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.repeats} calls; load at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    medians = {side: {b: [] for b in args.batches} for side in paths}
    for r in range(args.rounds):
        for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
            for batch, times in run_side(paths[side], args).items():
                medians[side][int(batch)].append(statistics.median(times))
    print(f"{'batch':>5}  {'A median ms [min, max]':>26}  {'B median ms [min, max]':>26}  "
          f"{'A/B per round: median [min, max]':>34}")
    for batch in args.batches:
        a, b = medians["A"][batch], medians["B"][batch]
        ratios = [x / y for x, y in zip(a, b)]
        cell = (lambda v: f"{1e3 * statistics.median(v):8.1f} [{1e3 * min(v):.1f}, {1e3 * max(v):.1f}]")
        print(f"{batch:>5}  {cell(a):>26}  {cell(b):>26}  "
              f"{statistics.median(ratios):>14.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")
    print(f"load at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}; A/B > 1: B is faster")


if __name__ == "__main__":
    main()
