"""Where a model's products lose against the peak: the wall time of every GEMM shape inside the
steady steps of a herbs.Model, with its GFLOP/s and share of the machine's peak, and how much of
the step the products take at all.

The workload is bench_ab.py's (Model.predict, or with --train bench_peers.py's training
step). The profile starts after two untimed steps: the first steps fault the arena and the packed
weights in, page by page, and a profile that includes them charges first-touch time to the
products (the stage-3 products of a Swin-L training step read 301 GF/s so, 415 in steady state).
Products that a parallel region runs per thread are not timed (herbs._C.gemm_profile: Swin's
first-stage MLP by row chunks); the step's other time is everything else (attention, norms,
activations, those products, the optimiser).

    python benchmarks/profile_gemms.py                                   # Swin-T 224 eval, batch 8, bf16
    python benchmarks/profile_gemms.py --train --batch 8
    python benchmarks/profile_gemms.py --model swin_large_patch4_window12_384 --img-size 384 --batch 1
"""
import argparse
import os
import statistics
import sys
import time

from common import load, machine, model_step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="swin_tiny_patch4_window7_224")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=4, help="profiled steps, after two untimed ones")
    p.add_argument("--train", action="store_true", help="a training step instead of a prediction")
    p.add_argument("--top", type=int, default=25, help="shapes listed, by time")
    p.add_argument("--peak", type=float, default=None, help="GF/s to quote shares of (default: measured here)")
    args = p.parse_args()

    import numpy as np

    import herbs
    from herbs import _C
    herbs.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    model = herbs.Model(args.model, num_classes=args.classes, img_size=args.img_size, seed=0, precision=args.precision)
    x = rng.standard_normal((args.batch, 3, args.img_size, args.img_size)).astype(np.float32)
    step = model_step(model, x, args.classes, args.train, rng)
    step()
    step()
    times = []
    _C.gemm_profile(True)
    try:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    finally:
        _C.gemm_profile(False)
    entries = _C.gemm_profile_entries()
    peak = args.peak
    if peak is None:
        import peaks
        peak = peaks.measure(args.threads)["bf16" if args.precision == "bf16" else "fp32"]

    def flops(e):  # of one step
        return 2.0 * e["M"] * e["N"] * e["K"] * e["calls"] / args.steps

    step_ms = 1e3 * sum(times) / args.steps
    gemm_ms = 1e3 * sum(e["seconds"] for e in entries) / args.steps
    total = sum(flops(e) for e in entries)
    kernel = herbs.cpu_info()["bf16_gemm_kernel" if args.precision == "bf16" else "gemm_kernel"]
    work = "training step" if args.train else "predict"
    print(f"machine: {machine()}; load {load()}; {kernel}, {args.threads} thread(s), peak {peak:.0f} GF/s")
    print(f"{args.model} {args.img_size} batch {args.batch} {args.precision} {work}: "
          f"{statistics.median(times) * 1e3:.1f} ms median of {args.steps} [{min(times) * 1e3:.1f}, "
          f"{max(times) * 1e3:.1f}]")
    print(f"products timed: {gemm_ms:.1f} ms per step ({100 * gemm_ms / step_ms:.0f}% of it), {total / 1e9:.1f} "
          f"GFLOP at {total / gemm_ms / 1e6:.0f} GF/s ({100 * total / gemm_ms / 1e6 / peak:.0f}% of peak); at the "
          f"peak they would take {total / peak / 1e6:.1f} ms")
    print(f"\n{'ms/step':>8} {'GF/s':>5} {'peak':>5} {'lost ms':>7}  {'calls':>5}  shape (M x N x K) and operands")
    for e in sorted(entries, key=lambda e: -e["seconds"])[:args.top]:
        ms = 1e3 * e["seconds"] / args.steps
        rate = flops(e) / ms / 1e6
        forms = (("Aᵀ", "trans_a"), ("Bᵀ", "trans_b"), ("A bf16", "a_bf16"), ("B bf16", "b_bf16"),
                 ("B packed once", "packed"))
        operands = ", ".join(name for name, key in forms if e[key])
        print(f"{ms:8.2f} {rate:5.0f} {100 * rate / peak:4.0f}% {ms - flops(e) / peak / 1e6:7.2f}  "
              f"{e['calls'] // args.steps:5d}  {e['M']} x {e['N']} x {e['K']}{'  ' + operands if operands else ''}")

if __name__ == "__main__":
    sys.exit(main())
