"""HERBS on herbs against the PyTorch reference (tests/reference_herbs.py on tests/reference_swin.py,
tests/reference_resnet.py or tests/reference_vit.py), same weights, same thread count, side by side in
one run:

- train: one full training step (forward, the objective of SPEC.md §4, backward), images/s;
- infer: an eval-mode forward of the same batch, images/s;
- latency: an eval-mode forward of one image, ms.

Each side runs in its own subprocess (so peak memory, the max resident set size, is its own),
repeats every measurement after a warm-up, and reports the median and the min–max spread over
all runs. The sides alternate over rounds (herbs, PyTorch, then PyTorch, herbs, ...), so a change
in the machine's load during the run falls on both. With --precision bf16 herbs runs at bf16
(Model.precision) and PyTorch under its CPU autocast to bfloat16.

    python benchmarks/bench_herbs.py            # Swin-T 224 b8, ResNet-50 224 b8, Swin-L 384 b1
    python benchmarks/bench_herbs.py --quick    # small batches, fewer repeats
    python benchmarks/bench_herbs.py --threads 2 --rounds 3 --repeats 2
    python benchmarks/bench_herbs.py --configs vit_448,vit_224 --precision bf16  # the release's ViT-B/16
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import (add_wait_policy_argument, load, machine, memory_mb, print_herbs_torch_rows, run_child,  # noqa: E402
                    take_turns, timed, torch_model)

CONFIGS = {  # name: (herbs.Model backbone, batch, img_size)
    "swin_t_224": ("swin_tiny_patch4_window7_224", 8, 224),
    "resnet50_224": ("resnet50", 8, 224),
    "swin_l_384": ("swin_large_patch4_window12_384", 1, 384),
    "vit_448": ("vit_base_patch16_224_miil_in21k", 1, 448),  # the release's build_vit16 size
    "vit_224": ("vit_base_patch16_224_miil_in21k", 8, 224),
}
DEFAULT_CONFIGS = ("swin_t_224", "resnet50_224", "swin_l_384")
QUICK = {"swin_t_224": 2, "resnet50_224": 2, "swin_l_384": 1, "vit_448": 1, "vit_224": 2}
CLASSES = 200


def herbs_model(backbone, img_size):
    import herbs
    return herbs.Model(backbone, num_classes=CLASSES, img_size=img_size, seed=0)


def worker(side, config, batch, threads, repeats, weights, precision):
    """Runs one side's measurements; prints one JSON line. The PyTorch side builds no herbs
    model (its memory would count in PyTorch's peak): it reads the configuration and weights."""
    import numpy as np

    backbone, _, img_size = CONFIGS[config]
    state = dict(np.load(weights))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, img_size, img_size)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch)
    x1 = x[:1].copy()
    if side == "herbs":
        import herbs
        herbs.set_num_threads(threads)
        model = herbs_model(backbone, img_size)
        model.load_state_dict(state)
        model.precision = precision
        del state
        train = lambda: model.train_step(x, y)
        infer = lambda: model.forward(x, train=False)
        latency = lambda: model.forward(x1, train=False)
    else:
        import torch
        from reference_herbs import herbs_loss
        torch.set_num_threads(threads)
        with open(weights + ".json") as f:
            ref = torch_model(json.load(f), state)
        del state
        tx, ty, tx1 = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x1)
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def train():
            ref.train()
            with autocast():
                out, _ = ref(tx)
                loss = herbs_loss(out, ty)[0]
            loss.backward()

        def infer_on(images):
            ref.eval()
            with torch.no_grad(), autocast():
                ref(images)

        infer = lambda: infer_on(tx)
        latency = lambda: infer_on(tx1)
    result = {"train": timed(train, repeats), "infer": timed(infer, repeats), "latency": timed(latency, repeats),
              "peak_mb": memory_mb()}
    print(json.dumps(result))


def run_side(side, config, batch, threads, repeats, weights, wait_policy, precision):
    args = ["--worker", side, "--config", config, "--batch", str(batch), "--threads", str(threads), "--repeats",
            str(repeats), "--weights", weights, "--precision", precision]
    return run_child(__file__, args, threads, wait_policy, f"{side} {config}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small batches, one timed run per round")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=2, help="subprocesses per side, alternating (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement and round (default 2, quick 1)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated subset of {', '.join(CONFIGS)} (default {', '.join(DEFAULT_CONFIGS)})")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="of both sides (default fp32)")
    add_wait_policy_argument(p)
    p.add_argument("--worker", choices=["herbs", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.config, args.batch, args.threads, args.repeats, args.weights, args.precision)

    repeats = args.repeats or (1 if args.quick else 2)
    print(f"machine: {machine()}; threads {args.threads}, {args.rounds} rounds x {repeats} runs, {args.precision}, "
          f"OMP_WAIT_POLICY {args.wait_policy} (both sides); load (1/5/15 min) at start {load()}")
    print(f"{'config':<14}{'batch':>6}  {'measure':<9}{'herbs':>22}{'PyTorch':>22}{'ratio':>8}{'peak MB (h/t)':>17}")
    for config in args.configs.split(","):
        backbone, batch, img_size = CONFIGS[config]
        batch = QUICK[config] if args.quick else batch
        with tempfile.TemporaryDirectory() as tmp:
            import numpy as np
            weights = os.path.join(tmp, "weights.npz")
            model = herbs_model(backbone, img_size)
            np.savez(weights, **model.state_dict())
            with open(weights + ".json", "w") as f:
                json.dump(model.config, f)
            del model
            results = take_turns(args.rounds, ("herbs", "torch"), lambda side: run_side(
                side, config, batch, args.threads, repeats, weights, args.wait_policy, args.precision))
        print_herbs_torch_rows(config, batch, results, 14)
    print(f"load (1/5/15 min) at the end {load()}; ratio = PyTorch time / herbs time (> 1: herbs faster)")


if __name__ == "__main__":
    main()
