"""herbs' EfficientNet backbone against the PyTorch reference (tests/reference_efficientnet.py,
torchvision's EfficientNet in torch.nn), same weights, same thread count, one run: batch-1
latency of a forward in eval mode, and the train step (forward+backward in train mode, gradients
from all four taps, parameter gradients zeroed each step) in images/s, as medians of repeats with
the spread, and each side's peak resident memory (each side runs in its own subprocess; the
weights travel as an .npz, so the herbs process never imports torch). The sides take turns over
several rounds, so a change of load on a shared machine does not favour one of them.

    python benchmarks/bench_efficientnet.py            # EfficientNet-B7, 448 px (the release's), train batch 2
    python benchmarks/bench_efficientnet.py --quick    # B7 at 224 px, fewer repeats
"""
import argparse
import datetime
import os
import sys

from common import (BACKBONE_SIDES, add_wait_policy_argument, backbone_sides, load, load_weights, machine, summary,
                    time_backbone, time_torch_backbone)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images(args, batch):
    import numpy as np
    return np.random.default_rng(0).standard_normal((batch, 3, args.img_size, args.img_size)).astype(np.float32)


def run_herbs(args, weights):
    import herbs
    from herbs import _C
    herbs.set_num_threads(args.threads)
    net = _C.Net("efficientnet", {"img_size": args.img_size}, 0)
    load_weights(net, weights)
    one, x = images(args, 1), images(args, args.batch)
    return time_backbone(net, one, x, args.repeats, args.warmup, seed=1)


def reference(weights=None):
    import numpy as np
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference_efficientnet import EfficientNet
    model = EfficientNet()
    if weights:
        state = np.load(weights)
        model.load_state_dict({k: torch.from_numpy(state[k]) for k in model.state_dict()})
    return model


def run_torch(args, weights, channels_last):
    import torch
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = reference(weights).to(memory_format=fmt)
    one = torch.from_numpy(images(args, 1)).contiguous(memory_format=fmt)
    x = torch.from_numpy(images(args, args.batch)).contiguous(memory_format=fmt)
    return time_torch_backbone(model, one, x, args.repeats, args.warmup)


def make_weights(args, path):
    """torchvision's initialisation, with running statistics that fit the activations (as in a
    trained net): eval-mode values then stay of order one instead of shrinking into denormals,
    which would time the floating-point slow paths rather than the network."""
    import numpy as np
    import torch
    torch.manual_seed(0)
    model = reference()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # a cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, args.img_size, args.img_size))
    for m in bns:
        m.momentum = 0.01
    np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="224 px, 2 repeats, 1 round")
    p.add_argument("--img-size", type=int, default=448)
    p.add_argument("--batch", type=int, default=2, help="images per train step")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2, help="turns each side takes")
    p.add_argument("--warmup", type=int, default=1)
    add_wait_policy_argument(p)
    p.add_argument("--side", choices=BACKBONE_SIDES, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.img_size, args.repeats, args.rounds = 224, 2, 1

    load_before = load()
    results = backbone_sides(__file__, args, make_weights, [
        "--img-size", str(args.img_size), "--batch", str(args.batch), "--threads", str(args.threads), "--repeats",
        str(args.repeats), "--warmup", str(args.warmup)], run_herbs, run_torch)
    if results is None:  # a child: its side was printed
        return

    print(f"EfficientNet-B7, {args.img_size} px; latency at batch 1, train step at batch {args.batch}")
    print(f"machine: {machine()}; threads: {args.threads}; OMP_WAIT_POLICY {args.wait_policy} (both sides); "
          f"load (1/5/15 min) before: {load_before}, after: {load()}; "
          f"{datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"median of {args.rounds} rounds x {args.repeats} repeats (each after {args.warmup} warm-up), [min, max]")
    print(f"{'':28s}{'herbs':>22s}{'torch NCHW':>22s}{'torch channels_last':>22s}{'speed-up vs best torch':>24s}")
    rows = {"latency (eval), ms": ("forward", lambda t: 1000 * t, min, ".0f"),
            "train step, images/s": ("train", lambda t: args.batch / t, max, ".3f")}
    for label, (what, value, better, f) in rows.items():
        row = {side: summary([value(t) for t in r[what]]) for side, r in results.items()}
        best = better(row["torch"][0], row["torch_channels_last"][0])
        ratio = best / row["herbs"][0] if better is min else row["herbs"][0] / best
        cells = "".join(f"{m:8{f}} [{lo:6{f}},{hi:6{f}}]".rjust(22) for m, lo, hi in row.values())
        print(f"{label:28s}{cells}{ratio:23.2f}x")
    print(f"{'peak resident MB':28s}" + "".join(f"{r['peak_mb']:22.0f}" for r in results.values()))
    # CPU time is what a busy shared machine disturbs least (a thread waiting for its core costs none)
    print("CPU seconds (all threads) per image, median [min, max]:")
    for label, what, batch in (("latency (eval)", "forward", 1), ("train step", "train", args.batch)):
        row = {side: summary([t / batch for t in r[what + "_cpu"]]) for side, r in results.items()}
        best = min(row["torch"][0], row["torch_channels_last"][0])
        cells = "".join(f"{m:8.3f} [{lo:6.3f},{hi:6.3f}]".rjust(22) for m, lo, hi in row.values())
        print(f"{label:28s}{cells}{best / row['herbs'][0]:23.2f}x")


if __name__ == "__main__":
    main()
