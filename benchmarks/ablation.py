"""The ablation table of HERBS on the built-in fine-grained birds (herbs.synthetic): each module
added in turn, every variant trained with the same budget (the demo's data, model size, epochs and
learning rate) from the same seeds, and its validation top-1 reported as mean ± standard deviation
(and min–max) over the seeds:

- backbone only: the Swin, a token mean of its last tap and a linear head (``ori_out``);
- + FPN: the two-way feature pyramid with its per-token classifiers (the ensemble of its 8 heads);
- + selector & combiner: background suppression (the selector, the dropped-token loss, the GCN
  combiner; the 9-head ensemble), without refinement (λ_r = 0);
- + refinement: high-temperature refinement on top (λ_r = 1.375): the full HERBS of the demo.

    python benchmarks/ablation.py                    # 3 seeds, the demo's budget (~25 min on 2 idle cores)
    python benchmarks/ablation.py --seeds 0 1 2 3 4 --epochs 6 --json ablation.json
    python benchmarks/ablation.py --variants 3 --precision bf16   # HERBS trained in bf16 mixed precision

Prints a Markdown table (the one in README.md) with the machine, the load and the wall time.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

from common import load, machine

from herbs.demo import DemoConfig, evaluate_model, train_model

VARIANTS = {  # name: (herbs.Model switches, train_step loss options)
    "backbone only (`ori_out`)": ({"use_fpn": False, "use_selection": False, "use_combiner": False}, {}),
    "+ FPN": ({"use_fpn": True, "use_selection": False, "use_combiner": False}, {"lambda_r": 0.0}),
    "+ selector & combiner": ({}, {"lambda_r": 0.0}),
    "+ refinement (HERBS)": ({}, {}),
}


def run_variant(config: DemoConfig, model_options: dict, loss_options: dict) -> float:
    """Validation top-1 of the ensemble of the heads the variant has (ori_out alone for the backbone)."""
    trained = train_model(config, model_options=model_options, loss_options=loss_options, log=lambda s: None)
    return evaluate_model(trained.model, trained.val_set).accuracy["ensemble"]["top1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    for field in dataclasses.fields(DemoConfig):
        if field.name not in ("seed", "heatmaps"):
            p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    p.add_argument("--variants", type=int, nargs="+", default=list(range(len(VARIANTS))),
                   help="which rows to run (0 = backbone only ... 3 = HERBS)")
    p.add_argument("--json", help="also write every run's top-1 here")
    a = p.parse_args()
    base = {f.name: getattr(a, f.name) for f in dataclasses.fields(DemoConfig) if f.name not in ("seed", "heatmaps")}
    started, results = time.perf_counter(), {}
    for name in [list(VARIANTS)[k] for k in a.variants]:
        model_options, loss_options = VARIANTS[name]
        results[name] = []
        for seed in a.seeds:
            t0 = time.perf_counter()
            results[name].append(run_variant(DemoConfig(**base, seed=seed), model_options, loss_options))
            print(f"{name}, seed {seed}: top-1 {100 * results[name][-1]:.1f}% ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    print(f"{machine()}, {os.environ.get('OMP_NUM_THREADS', 'all')} threads, load {load()} at the end, "
          f"{(time.perf_counter() - started) / 60:.1f} min; budget: {base}, seeds {a.seeds}\n")
    print("| variant | top-1 mean ± std (%) | min–max (%) | per seed (%) |\n|---|---|---|---|")
    for name, values in results.items():
        percent = [100 * v for v in values]
        spread = statistics.stdev(percent) if len(percent) > 1 else 0.0
        print(f"| {name} | {statistics.mean(percent):.1f} ± {spread:.1f} | {min(percent):.1f}–{max(percent):.1f} | "
              + ", ".join(f"{v:.1f}" for v in percent) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"budget": base, "seeds": a.seeds, "top1": results}, f, indent=1)


if __name__ == "__main__":
    main()
