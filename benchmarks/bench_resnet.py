"""herbs' ResNet backbone against the PyTorch reference (tests/reference_resnet.py), same weights,
same thread count, one run: forward in eval mode and forward+backward in train mode (gradients
from all four taps, parameter gradients zeroed each step), images/s as the median of repeats with
the spread, and each side's peak resident memory (each side runs in its own subprocess; the
weights travel as an .npz, so the herbs process never imports torch). The sides take turns over
several rounds, so a change of load on a shared machine does not favour one of them.

    python benchmarks/bench_resnet.py            # ResNet-50, 224 px, batch 8
    python benchmarks/bench_resnet.py --quick    # a smaller, faster run
"""
import argparse
import datetime
import os
import sys

from common import (BACKBONE_SIDES, add_wait_policy_argument, backbone_sides, load, load_weights, machine, summary,
                    time_backbone, time_torch_backbone)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_herbs(args, weights):
    import numpy as np
    import herbs
    from herbs import _C
    herbs.set_num_threads(args.threads)
    net = _C.Net("resnet", {"img_size": args.img_size, "depths": args.depths, "width": args.width}, 0)
    load_weights(net, weights)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, args.img_size, args.img_size)).astype(np.float32)
    return time_backbone(net, x, x, args.repeats, args.warmup, seed=1)


def run_torch(args, weights, channels_last):
    import numpy as np
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference_resnet import ResNet
    torch.set_num_threads(args.threads)
    model = ResNet(tuple(args.depths), args.width)
    state = np.load(weights)
    model.load_state_dict({k: torch.from_numpy(state[k]) for k in model.state_dict()})
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((args.batch, 3, args.img_size, args.img_size)).astype(np.float32))
    x = x.contiguous(memory_format=fmt)
    return time_torch_backbone(model, x, x, args.repeats, args.warmup)


def make_weights(args, path):
    import numpy as np
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference_resnet import ResNet, randomize
    torch.manual_seed(0)
    model = randomize(ResNet(tuple(args.depths), args.width))
    # running statistics that fit the activations (as in a trained net): eval-mode values then
    # stay of order one instead of drifting into denormals or overflow, which would time the
    # floating-point slow paths rather than the network
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, args.img_size, args.img_size))
    for m in bns:
        m.momentum = 0.1
    np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})


def stats(times, batch):
    """Images/s: (median, min, max)."""
    return summary([batch / t for t in times])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="112 px, batch 4, 3 repeats")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--depths", type=int, nargs=4, default=[3, 4, 6, 3])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="turns each side takes")
    p.add_argument("--warmup", type=int, default=1)
    add_wait_policy_argument(p)
    p.add_argument("--side", choices=BACKBONE_SIDES, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.img_size, args.batch, args.repeats, args.rounds, args.warmup = 112, 4, 3, 2, 1

    load_before = load()
    results = backbone_sides(__file__, args, make_weights, [
        "--img-size", str(args.img_size), "--batch", str(args.batch), "--width", str(args.width), "--threads",
        str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--depths",
        *map(str, args.depths)], run_herbs, run_torch)
    if results is None:  # a child: its side was printed
        return

    print(f"ResNet depths={args.depths} width={args.width}, {args.img_size} px, batch {args.batch}")
    print(f"machine: {machine()}; threads: {args.threads}; OMP_WAIT_POLICY {args.wait_policy} (both sides); "
          f"load (1/5/15 min) before: {load_before}, after: {load()}; "
          f"{datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"median of {args.rounds} rounds x {args.repeats} repeats (each after {args.warmup} warm-up), "
          f"[min, max], in images/s")
    print(f"{'':24s}{'herbs':>22s}{'torch NCHW':>22s}{'torch channels_last':>22s}{'ratio vs best torch':>21s}")
    for what in ("forward", "train"):
        row = {side: stats(r[what], args.batch) for side, r in results.items()}
        best = max(row["torch"][0], row["torch_channels_last"][0])
        label = "forward (eval)" if what == "forward" else "forward+backward (train)"
        cells = "".join(f"{m:8.2f} [{lo:5.2f},{hi:5.2f}]".rjust(22) for m, lo, hi in row.values())
        print(f"{label:24s}{cells}{row['herbs'][0] / best:20.2f}x")
    print(f"{'peak resident MB':24s}" + "".join(f"{r['peak_mb']:22.0f}" for r in results.values()))
    # CPU time is what a busy shared machine disturbs least (a thread waiting for its core costs
    # none); with several threads it includes time spent spinning at barriers
    print("CPU seconds (all threads) per image, median [min, max]:")
    for what in ("forward", "train"):
        row = {side: stats(r[what + "_cpu"], args.batch) for side, r in results.items()}
        best = min(1 / row["torch"][0], 1 / row["torch_channels_last"][0])
        label = "forward (eval)" if what == "forward" else "forward+backward (train)"
        cells = "".join(f"{1 / m:8.3f} [{1 / hi:5.3f},{1 / lo:5.3f}]".rjust(22) for m, lo, hi in row.values())
        print(f"{label:24s}{cells}{best * row['herbs'][0]:20.2f}x")


if __name__ == "__main__":
    main()
