"""HERBS on the ViT-B/16 backbone (the release's build_vit16: fpn 512, 32 tokens per tap) against
the PyTorch reference (tests/reference_herbs.py on tests/reference_vit.py, attention through
scaled_dot_product_attention as timm's), same weights, same thread count, fp32, in one run:

- train: one full training step (forward, the objective of SPEC.md §4, backward), images/s;
- infer: an eval-mode forward of the batch, images/s;
- latency: an eval-mode forward of one image, ms.

Each side runs in its own subprocess (its own peak memory) and the sides alternate over rounds,
as in bench_herbs.py, whose helpers (benchmarks/common.py) this uses. With --precision bf16 herbs
runs its bf16 forward (Model.precision) and PyTorch its CPU autocast to bfloat16; both backwards
stay fp32 in their own ways.

    python benchmarks/bench_vit.py                     # 448 px batch 1 and 224 px batch 8
    python benchmarks/bench_vit.py --configs vit_448 --batch 8
    python benchmarks/bench_vit.py --rounds 1 --repeats 1
    python benchmarks/bench_vit.py --precision bf16
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
                    take_turns, timed)

CONFIGS = {"vit_448": (448, 1), "vit_224": (224, 8)}  # name: (img_size, batch)
BACKBONE = "vit_base_patch16_224_miil_in21k"
CLASSES = 200


def herbs_model(img_size):
    import herbs
    return herbs.Model(BACKBONE, num_classes=CLASSES, img_size=img_size, seed=0)


def torch_model(c, state):
    """The reference HERBS on the reference ViT with a herbs model's configuration (Model.config)
    and weights (its state dict)."""
    import reference_vit
    from herbs_compare import load_reference
    from reference_herbs import HERBS

    keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "qkv_bias", "taps")
    backbone = reference_vit.vit(**{k: c[k] for k in keys})
    tokens = [1 + (c["img_size"] // c["patch_size"]) ** 2] * 4
    ref = HERBS(backbone, [c["embed_dim"]] * 4, tokens, c["num_classes"], list(c["num_selects"]),
                fpn_size=c["fpn_size"])
    load_reference(ref, state)
    return ref


def worker(side, img_size, batch, threads, repeats, weights, precision):
    """One side's measurements, printed as one JSON line."""
    import numpy as np

    state = dict(np.load(weights))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, img_size, img_size)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch)
    x1 = x[:1].copy()
    if side == "herbs":
        import herbs
        herbs.set_num_threads(threads)
        model = herbs_model(img_size)
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
            ref.zero_grad()
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=2, help="subprocesses per side, alternating (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement and round (default 2)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--batch", type=int, default=None, help="batch of the train and infer measures (default per config)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="of the forward passes (default fp32)")
    add_wait_policy_argument(p)
    p.add_argument("--worker", choices=["herbs", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--img-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.img_size, args.batch, args.threads, args.repeats, args.weights, args.precision)

    import numpy as np
    print(f"machine: {machine()}; threads {args.threads}, {args.rounds} rounds x {args.repeats} runs, {args.precision}, "
          f"OMP_WAIT_POLICY {args.wait_policy} (both sides); load (1/5/15 min) at start {load()}")
    print(f"{'config':<10}{'batch':>6}  {'measure':<9}{'herbs':>22}{'PyTorch':>22}{'ratio':>8}{'peak MB (h/t)':>17}")
    for config in args.configs.split(","):
        img_size, batch = CONFIGS[config]
        batch = args.batch or batch
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "weights.npz")
            model = herbs_model(img_size)
            np.savez(weights, **model.state_dict())
            with open(weights + ".json", "w") as f:
                json.dump(model.config, f)
            del model
            run = lambda side: run_child(__file__, [
                "--worker", side, "--img-size", str(img_size), "--batch", str(batch), "--threads", str(args.threads),
                "--repeats", str(args.repeats), "--weights", weights, "--precision", args.precision], args.threads,
                args.wait_policy, f"{side} {config}")
            results = take_turns(args.rounds, ("herbs", "torch"), run)
        print_herbs_torch_rows(config, batch, results, 10)
    print(f"load (1/5/15 min) at the end {load()}; ratio = PyTorch time / herbs time (> 1: herbs faster)")


if __name__ == "__main__":
    main()
