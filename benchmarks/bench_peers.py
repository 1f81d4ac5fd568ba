"""HERBS inference on herbs against its peers: PyTorch eager, ONNX Runtime and OpenVINO, all running
the same model with the same weights, at the same thread count, side by side in one run.

The model is the PyTorch reference (tests/reference_herbs.py on tests/reference_swin.py or
tests/reference_resnet.py) loaded with a freshly initialised herbs model's state dict, wrapped to
return what an inference user needs — the class probabilities of herbs' `Model.predict` (the mean
softmax of the nine heads, SPEC.md §6) and the combiner's logits `comb_outs` — and exported from
PyTorch to ONNX for ONNX Runtime and OpenVINO, selector (top-k sort, gathers) and combiner included.
Columns:

- herbs fp32, herbs bf16: `herbs.Model(..., precision=...)`, timed on predict (the image-level
  forward + ensemble: the top-down heads' last product on their token mean, Model.forward's
  image_level);
- torch fp32: eager, `torch.inference_mode()`; torch bf16: the same under
  `torch.autocast("cpu", dtype=torch.bfloat16)`;
- ORT fp32: ONNX Runtime's CPU provider, all graph optimisations, intra_op_num_threads = threads;
- OV fp32, OV bf16: OpenVINO's CPU plugin with INFERENCE_PRECISION_HINT f32 / bf16 (on CPUs with
  AVX512-BF16 or AMX its default is bf16, so the fp32 column must ask for f32),
  INFERENCE_NUM_THREADS = threads and PERFORMANCE_HINT LATENCY (one stream holding every thread:
  each call is one synchronous request, batch 8 included; THROUGHPUT would split the threads
  into streams that serve parallel requests, which no other side gets).

Measures, eval-mode forward only: batch-1 latency (ms) and batch-8 throughput (img/s), medians
with [min, max] over every timed run, and the share of the machine's peak each one reaches: the
model's forward FLOPs (counted once per config on the PyTorch reference, batch 1, with
torch.utils.flop_counter.FlopCounterMode: products and convolutions) × batch / time, over the
fp32 FMA peak for fp32 columns and the bf16 dot-product peak for bf16 columns (benchmarks/peaks.py,
at the same thread count, measured at the start and at the end of the run; the higher of the two
counts, since a peak measured while something else holds a core comes out low). These are effective
rates, the reference's FLOPs over each side's time: herbs factors the CNN pyramid's top-down products
(herbs_c/nn/factored.h) and does fewer multiply-adds than the reference on ResNet-50, so its share
there can pass 100%. The ratio columns are speeds: OpenVINO's time / herbs' time at the same
precision (> 1: herbs faster). --quick, a smoke run: one round, few runs, throughput at batch 2.

Every side runs in its own subprocess (one per side and round: no thread pool of one library
spinning while another computes), and the sides take turns over rounds, the order reversed every
other round, so that a change in the machine's load falls on all of them. OMP_WAIT_POLICY (herbs,
PyTorch) follows --wait-policy; so does ONNX Runtime's own thread pool: with "passive" its intra-
and inter-op spinning is switched off (session.intra_op.allow_spinning = 0), with "active" or
"default" (the default: every library as a user gets it) it spins as it does by default. OpenVINO's
TBB pool is left as it is.

Before timing, the outputs of every side on the same images are compared with PyTorch fp32's
(max |difference| / max |PyTorch|, every batch); an ONNX Runtime or OpenVINO fp32 error of the
probabilities above 1e-4 is flagged, since it would mean a broken export. The error of comb_outs
is printed too, but not judged: the combiner reads the kept tokens in the selector's order, so two
tokens whose scores differ by float32 rounding (on the random weights of this run, neighbours a few
1e-6 apart are common) may swap between libraries and move comb_outs by ~1e-3 with nothing broken
(seen with OpenVINO fp32 on ResNet-50; the probabilities, a ninth of which is the combiner's,
still agree to ~1e-6).

The ONNX export: torch.onnx.export(..., dynamo=True) (the torch.export-based exporter; it needs
onnxscript). Neither exporter of torch 2.13 converts the selector's stable descending sort
(aten::sort.stable): it is translated here to ONNX TopK over the whole axis (k = axis length,
largest = 1, sorted = 1), which the ONNX spec orders with ties broken by the lower index — the
stable sort. The selector's per-image loop is unrolled at export, so there is one ONNX file per
batch size (static shapes, which ONNX Runtime and OpenVINO also prefer).

--train measures training instead: one optimiser step of a batch (the train-mode forward, the
objective of SPEC.md §4, the backward, then SGD with momentum 0.9, Nesterov and weight decay 3e-4,
the release's) on herbs fp32 and bf16 (`Model(precision=...)`: bf16 products in the forward and the
backward) against PyTorch eager fp32 and PyTorch under `torch.autocast("cpu", dtype=torch.bfloat16)`
(parameters, gradients and optimiser fp32 on both sides), at batch 8 (Swin-T, ResNet-50) and 1
(Swin-L 384). Columns: img/s (median [min, max]), the share of peak on the training FLOPs (forward
and backward of the reference, counted as for inference), and each side's peak resident memory
(VmHWM of its process: weights, gradients, optimiser state, activations, and the library itself).
Ratios: PyTorch time / herbs time at the same precision.

Peers are benchmark dependencies only (`pip install -e .[bench]`); a missing one is reported and
its columns skipped. PyTorch is required (the reference, the FLOP count, the export).

    PYTHONPATH=python python benchmarks/bench_peers.py                  # all configs (long)
    PYTHONPATH=python python benchmarks/bench_peers.py --quick --configs swin_t_224
    PYTHONPATH=python python benchmarks/bench_peers.py --configs resnet50_224 --threads 2 --markdown
    PYTHONPATH=python python benchmarks/bench_peers.py --train --configs swin_t_224
"""
import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from statistics import median

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import (add_wait_policy_argument, load, machine, memory_mb, run_child, take_turns, timed,  # noqa: E402
                    torch_model)

CONFIGS = {  # name: (herbs.Model backbone, img_size, batches: 1 for latency, more for throughput)
    "swin_t_224": ("swin_tiny_patch4_window7_224", 224, (1, 8)),
    "resnet50_224": ("resnet50", 224, (1, 8)),
    "swin_l_384": ("swin_large_patch4_window12_384", 384, (1,)),
}
CLASSES = 200
SIDES = {  # side: (column title, precision)
    "herbs_fp32": ("herbs fp32", "fp32"),
    "herbs_bf16": ("herbs bf16", "bf16"),
    "torch_fp32": ("torch fp32", "fp32"),
    "torch_bf16": ("torch autocast bf16", "bf16"),
    "ort_fp32": ("ORT fp32", "fp32"),
    "ov_fp32": ("OpenVINO fp32", "fp32"),
    "ov_bf16": ("OpenVINO bf16", "bf16"),
}
RATIOS = (("herbs_bf16", "ov_bf16"), ("herbs_fp32", "ov_fp32"))  # (herbs, peer): peer time / herbs time
TRAIN_SIDES = ("herbs_fp32", "herbs_bf16", "torch_fp32", "torch_bf16")
TRAIN_RATIOS = (("herbs_bf16", "torch_bf16"), ("herbs_fp32", "torch_fp32"))  # (herbs, peer): peer time / herbs time
LR, MOMENTUM, WEIGHT_DECAY = 1e-4, 0.9, 3e-4  # SGD as the release's, both sides
CHECKED = ("ort_fp32", "ov_fp32")  # fp32 peers whose outputs must match PyTorch fp32's
TOLERANCE = 1e-4


def probabilities_model(ref):
    """The reference wrapped for inference: images -> (class probabilities [B, classes] as in
    herbs' Model.predict, comb_outs [B, classes])."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, ref):
            super().__init__()
            self.ref = ref

        def forward(self, x):
            out, _ = self.ref(x)
            heads = [out[f"{p}layer{i}"].mean(1) for p in ("FPN1_", "") for i in range(1, 5)] + [out["comb_outs"]]
            return sum(torch.softmax(h, -1) for h in heads) / len(heads), out["comb_outs"]

    return Probabilities(ref).eval()


def images(config, batch):
    """The same images for every side: the first `batch` of one fixed random stream."""
    import numpy as np
    img_size = CONFIGS[config][1]
    return np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size)).astype(np.float32)


def reference(tmp):
    """The PyTorch reference with the weights the parent saved in tmp, wrapped for inference."""
    import numpy as np
    with open(os.path.join(tmp, "config.json")) as f:
        config = json.load(f)
    return probabilities_model(torch_model(config, dict(np.load(os.path.join(tmp, "weights.npz")))))


def onnx_path(tmp, batch):
    return os.path.join(tmp, f"herbs_b{batch}.onnx")


def sort_stable(self, stable=None, dim=-1, descending=False):
    """aten::sort.stable in ONNX: TopK over the whole axis, ties to the lower index (the ONNX spec)."""
    from onnxscript import opset18 as op
    k = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]))
    return op.TopK(self, k, axis=dim, largest=int(bool(descending)), sorted=1)


def herbs_model(tmp, config, threads, precision):
    """The herbs model of `config` with the weights the parent saved in tmp, at `precision`."""
    import herbs
    import numpy as np
    herbs.set_num_threads(threads)
    with open(os.path.join(tmp, "config.json")) as f:
        c = json.load(f)
    backbone, img_size, _ = CONFIGS[config]
    model = herbs.Model(backbone, num_classes=c["num_classes"], img_size=img_size, seed=0, precision=precision)
    model.load_state_dict(dict(np.load(os.path.join(tmp, "weights.npz"))))
    return model


def train_flops(tmp, config):
    """FLOPs of one training image: the reference's train-mode forward and backward, batch 1."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    model = reference(tmp).ref.train()
    counter = FlopCounterMode(display=False)
    with counter:
        out, _ = model(torch.from_numpy(images(config, 1)))
        sum(v.float().sum() for v in out.values()).backward()
    return counter.get_total_flops()


def train_step(side, config, batch, tmp, threads):
    """One side's training step on a fixed batch (a closure), everything built and loaded."""
    import numpy as np
    precision = SIDES[side][1]
    x = images(config, batch)
    y = np.random.default_rng(1).integers(0, CLASSES, batch)
    if side.startswith("herbs"):
        from herbs.optim import SGD
        model = herbs_model(tmp, config, threads, precision)
        optimizer = SGD(model.flat_parameters(), model.flat_gradients(), lr=LR, momentum=MOMENTUM,
                        weight_decay=WEIGHT_DECAY)

        def step():
            model.zero_grad()
            model.train_step(x, y)
            optimizer.step()
        return step
    import torch
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
    from reference_herbs import herbs_loss
    torch.set_num_threads(threads)
    model = reference(tmp).ref.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optimizer.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, _ = model(tx)
            loss, _ = herbs_loss(out, ty)
        loss.backward()
        optimizer.step()
    return step


def train_worker(side, config, batch, tmp, threads, repeats):
    """Times one side's training steps; prints one JSON line {"step": seconds per step, "peak_mb": MB}."""
    import warnings
    warnings.simplefilter("ignore", UserWarning)  # the release's KLDivLoss reduction "mean"
    step = train_step(side, config, batch, tmp, threads)
    print(json.dumps({"step": timed(step, repeats), "peak_mb": memory_mb()}))


def export(config, batches, tmp, threads, onnx, train):
    """Counts the forward FLOPs of one image (with `train`, its training FLOPs) and, with `onnx`,
    exports the model for every batch size; prints one JSON line."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    torch.set_num_threads(threads)
    if train:
        print(json.dumps({"flops": train_flops(tmp, config)}))
        return
    model = reference(tmp)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.from_numpy(images(config, 1)))
    result = {"flops": counter.get_total_flops()}
    if onnx:
        for batch in batches:
            with torch.no_grad():
                torch.onnx.export(model, (torch.from_numpy(images(config, batch)),), onnx_path(tmp, batch),
                                  dynamo=True, verbose=False, input_names=["images"],
                                  output_names=["probabilities", "comb_outs"],
                                  custom_translation_table={torch.ops.aten.sort.stable: sort_stable})
    print(json.dumps(result))


def runner(side, config, batches, tmp, threads, wait_policy):
    """{batch: f(images) -> (probabilities, comb_outs)} for one side, everything built and loaded;
    or a string saying why the side cannot run here."""
    import numpy as np
    precision = SIDES[side][1]
    if side.startswith("herbs"):
        from herbs.evaluate import ensemble_probabilities
        model = herbs_model(tmp, config, threads, precision)

        def run(x):
            out = model.forward(x, train=False, image_level=True)
            return ensemble_probabilities(out).astype(np.float32), out["comb_outs"]  # = Model.predict
        return {b: run for b in batches}
    if side.startswith("torch"):
        import torch
        torch.set_num_threads(threads)
        model = reference(tmp)

        def run(x):
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                p, c = model(torch.from_numpy(x))
            return p.float().numpy(), c.float().numpy()
        return {b: run for b in batches}
    if side == "ort_fp32":
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if wait_policy == "passive":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        sessions = {b: ort.InferenceSession(onnx_path(tmp, b), options, providers=["CPUExecutionProvider"])
                    for b in batches}
        return {b: (lambda x, s=s: tuple(s.run(None, {"images": x}))) for b, s in sessions.items()}
    if side.startswith("ov"):
        import openvino as ov
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return "OpenVINO's CPU plugin has no bf16 on this CPU"
        properties = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                      "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        requests = {b: core.compile_model(core.read_model(onnx_path(tmp, b)), "CPU", properties).create_infer_request()
                    for b in batches}

        def run(x, request):
            result = request.infer({0: x}, share_inputs=True, share_outputs=True)
            return result[0], result[1]
        return {b: (lambda x, r=r: run(x, r)) for b, r in requests.items()}
    raise ValueError(side)


def worker(side, config, batches, tmp, threads, repeats, wait_policy, save):
    """Runs one side's measurements for one config; prints one JSON line {str(batch): seconds
    per run}. With `save`, first writes the side's outputs for every batch to tmp (for the check)."""
    import numpy as np
    runs = runner(side, config, batches, tmp, threads, wait_policy)
    if isinstance(runs, str):
        print(json.dumps({"skipped": runs}))
        return
    result = {}
    for batch, run in runs.items():
        x = images(config, batch)
        probabilities, comb = run(x)  # also the first warm-up run
        if save:
            np.savez(os.path.join(tmp, f"out_{side}_b{batch}.npz"), probabilities=probabilities, comb_outs=comb)
        result[str(batch)] = timed(lambda: run(x), repeats[0] if batch == 1 else repeats[1])
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# the parent: availability, versions, peaks, the turns, the check, the table

def missing_peers():
    """{side: why it cannot run} for the sides whose packages are not installed."""
    missing = {}
    lacking = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if lacking:
        for side in ("ort_fp32", "ov_fp32", "ov_bf16"):
            missing[side] = f"the ONNX export needs {' and '.join(lacking)} (not installed)"
    if importlib.util.find_spec("onnxruntime") is None:
        missing.setdefault("ort_fp32", "onnxruntime is not installed")
    if importlib.util.find_spec("openvino") is None:
        for side in ("ov_fp32", "ov_bf16"):
            missing.setdefault(side, "openvino is not installed")
    return missing


def versions():
    found = []
    for name in ("torch", "onnxruntime", "openvino", "onnx", "onnxscript", "numpy"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def relative_error(tmp, side, batches, name):
    """max |side - torch fp32| / max |torch fp32| of one output over every batch."""
    import numpy as np
    worst = 0.0
    for b in batches:
        mine, theirs = (np.load(os.path.join(tmp, f"out_{s}_b{b}.npz"))[name] for s in (side, "torch_fp32"))
        a, r = np.asarray(mine, np.float64), np.asarray(theirs, np.float64)
        worst = max(worst, float(np.abs(a - r).max() / np.abs(r).max()))
    return worst


def cells(side, times, batch, flops, peaks):
    """(speed text, share-of-peak text) of one side's times for one batch."""
    if not times:
        return "n/a", "n/a"
    m = median(times)
    if batch == 1:
        speed = f"{1e3 * m:.1f} [{1e3 * min(times):.1f}, {1e3 * max(times):.1f}]"
    else:
        speed = f"{batch / m:.2f} [{batch / max(times):.2f}, {batch / min(times):.2f}]"
    gflops = flops * batch / m / 1e9
    peak = peaks.get(SIDES[side][1]) if peaks else None
    share = f"{gflops:.0f} GF/s, {100 * gflops / peak:.0f}%" if peak else f"{gflops:.0f} GF/s"
    return speed, share


def table_rows(results, peaks):
    """Rows of [config, batch, measure, one cell per side, ratios] for every config measured."""
    rows = []
    for config, (batches, times, flops) in results.items():
        for batch in batches:
            speed, share = zip(*(cells(s, times[s].get(str(batch)), batch, flops, peaks) for s in SIDES))
            ratios = []
            for h, p in RATIOS:
                th, tp = times[h].get(str(batch)), times[p].get(str(batch))
                ratios.append(f"{median(tp) / median(th):.2f}x" if th and tp else "n/a")
            measure = "latency ms" if batch == 1 else "img/s"
            rows.append([config, str(batch), measure, *speed, *ratios])
            rows.append([config, str(batch), "of peak", *share, "", ""])
    return rows


def train_rows(results, peaks):
    """Rows of [config, batch, one img/s cell per side, share of peak per side, peak MB per side, ratios]."""
    rows = []
    for config, (batch, times, flops) in results.items():
        row = [config, str(batch)]
        for side in TRAIN_SIDES:
            steps = times[side].get("step")
            row.append(f"{batch / median(steps):.2f} [{batch / max(steps):.2f}, {batch / min(steps):.2f}]"
                       if steps else "n/a")
        for side in TRAIN_SIDES:
            steps, peak = times[side].get("step"), (peaks or {}).get(SIDES[side][1])
            gflops = flops * batch / median(steps) / 1e9 if steps else None
            row.append("n/a" if gflops is None else f"{gflops:.0f} GF/s" + (f", {100 * gflops / peak:.0f}%" if peak else ""))
        row += [f"{times[s]['peak_mb']:.0f}" if "peak_mb" in times[s] else "n/a" for s in TRAIN_SIDES]
        for h, p in TRAIN_RATIOS:
            th, tp = times[h].get("step"), times[p].get("step")
            row.append(f"{median(tp) / median(th):.2f}x" if th and tp else "n/a")
        rows.append(row)
    return rows


TRAIN_HEADER = ["config", "batch", *(f"{SIDES[s][0]} img/s" for s in TRAIN_SIDES),
                *(f"{SIDES[s][0]} of peak" for s in TRAIN_SIDES), *(f"{SIDES[s][0]} peak MB" for s in TRAIN_SIDES),
                "herbs bf16 / autocast", "herbs fp32 / torch fp32"]


HEADER = ["config", "batch", "measure", *(title for title, _ in SIDES.values()),
          "herbs bf16 / OV bf16", "herbs fp32 / OV fp32"]


def measure_peaks(peaks_module, threads, when):
    """{'fp32': GF/s, 'bf16': GF/s} of this machine at `threads` threads, printed; None if the
    peak kernel cannot be built here (no C compiler, not x86-64 with AVX-512)."""
    try:
        peaks = peaks_module.measure(threads)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"peaks not measured at the {when} ({e})")
        return None
    print(f"peaks at the {when}, {threads} thread(s): fp32 FMA {peaks['fp32']:.0f} GF/s, bf16 dot product "
          f"{peaks['bf16']:.0f} GF/s" + (" (no AVX512-BF16)" if not peaks["bf16"] else ""), flush=True)
    return peaks


def print_table(rows, markdown, header=HEADER, left=3):
    """The table, aligned as text or as Markdown; the first `left` columns are labels."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())


def save_model(tmp, config):
    """A freshly initialised herbs model of `config`: its weights and configuration into tmp, for every side."""
    import herbs
    import numpy as np
    backbone, img_size, _ = CONFIGS[config]
    model = herbs.Model(backbone, num_classes=CLASSES, img_size=img_size, seed=0)
    np.savez(os.path.join(tmp, "weights.npz"), **model.state_dict())
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(model.config, f)


def train_main(args, configs, rounds, peaks, peaks_module):
    """--train: every side's training steps per config, taking turns; the table."""
    repeats = args.repeats or (1 if args.quick else 3)
    results = {}
    for config in configs:
        batch = min(2, max(CONFIGS[config][2])) if args.quick else max(CONFIGS[config][2])
        with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
            save_model(tmp, config)
            common = ["--config", config, "--tmp", tmp, "--threads", str(args.threads), "--batches", str(batch)]
            flops = run_child(__file__, ["--worker", "export", "--train", *common], args.threads, args.wait_policy,
                              f"FLOP count {config}")["flops"]
            times = take_turns(rounds, TRAIN_SIDES, lambda side: run_child(
                __file__, ["--worker", f"train_{side}", *common, "--repeat-counts", str(repeats)], args.threads,
                args.wait_policy, f"{side} training {config}"))
        results[config] = (batch, times, flops)
        print(f"{config}: {flops / 1e9:.1f} GFLOPs per training image; steps of batch {batch}: "
              f"{rounds} round(s) x {repeats}", flush=True)
    end = measure_peaks(peaks_module, args.threads, "end")
    if peaks and end:
        peaks = {k: max(peaks[k], end[k]) for k in peaks}
    print()
    rows = train_rows(results, peaks)
    print_table(rows, False, TRAIN_HEADER, 2)
    print(f"load (1/5/15 min) at the end {load()}; img/s: median [min, max]; of peak: the reference's training "
          f"FLOPs per second and their share of the fp32 or bf16 peak; peak MB: the process's resident peak; "
          f"ratios: PyTorch time / herbs time (> 1: herbs faster)")
    if args.markdown:
        print()
        print_table(rows, True, TRAIN_HEADER, 2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: one round, throughput at batch 2, few runs")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=None, help="subprocesses per side, alternating (default 2, quick 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per measurement and round (default 10 at batch 1 and 3 above; quick 3 and 1)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for the README)")
    p.add_argument("--train", action="store_true", help="measure training steps (herbs and PyTorch, fp32 and bf16)")
    add_wait_policy_argument(p)
    p.add_argument("--worker", choices=[*SIDES, "export", *(f"train_{s}" for s in TRAIN_SIDES)], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--batches", help=argparse.SUPPRESS)
    p.add_argument("--repeat-counts", help=argparse.SUPPRESS)
    p.add_argument("--save", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--onnx", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")

    if args.worker:
        batches = tuple(int(b) for b in args.batches.split(","))
        if args.worker == "export":
            return export(args.config, batches, args.tmp, args.threads, args.onnx, args.train)
        if args.worker.startswith("train_"):
            return train_worker(args.worker[len("train_"):], args.config, batches[0], args.tmp, args.threads,
                                int(args.repeat_counts))
        repeats = tuple(int(r) for r in args.repeat_counts.split(","))
        return worker(args.worker, args.config, batches, args.tmp, args.threads, repeats, args.wait_policy,
                      args.save)

    if importlib.util.find_spec("torch") is None:
        sys.exit("bench_peers needs PyTorch (the reference model, the FLOP count and the ONNX export): "
                 "pip install -e .[bench]")
    import herbs
    import peaks as peaks_module

    rounds = args.rounds or (1 if args.quick else 2)
    repeats = (args.repeats or (3 if args.quick else 10), args.repeats or (1 if args.quick else 3))
    missing = missing_peers()
    print(f"machine: {machine()}; {datetime.datetime.now().isoformat(timespec='seconds')}; threads {args.threads}, "
          f"{rounds} round(s) x {repeats[0]} runs at batch 1 and {repeats[1]} above, OMP_WAIT_POLICY "
          f"{args.wait_policy} (herbs, PyTorch), ORT spinning "
          f"{'off' if args.wait_policy == 'passive' else 'on'}; load (1/5/15 min) at start {load()}")
    print(f"versions: herbs {herbs.__version__} {herbs.cpu_info()}; {versions()}")
    for side, why in missing.items():
        print(f"skipped: {SIDES[side][0]}: {why} (pip install -e .[bench])")
    peaks = measure_peaks(peaks_module, args.threads, "start")
    if args.train:
        return train_main(args, configs, rounds, peaks, peaks_module)

    results = {}
    for config in configs:
        backbone, img_size, batches = CONFIGS[config]
        batches = tuple(2 if args.quick and b > 1 else b for b in batches)
        sides = [s for s in SIDES if s not in missing]
        skipped = dict(missing)
        with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
            save_model(tmp, config)
            common = ["--config", config, "--tmp", tmp, "--threads", str(args.threads),
                      "--batches", ",".join(map(str, batches))]
            onnx = any(s in sides for s in ("ort_fp32", "ov_fp32", "ov_bf16"))
            flops = run_child(__file__, ["--worker", "export", *common] + (["--onnx"] if onnx else []),
                              args.threads, args.wait_policy, f"export {config}")["flops"]
            saved = set()

            def measure(side):
                if side in skipped:
                    return {}
                arguments = ["--worker", side, *common, "--repeat-counts", ",".join(map(str, repeats)),
                             "--wait-policy", args.wait_policy] + ([] if side in saved else ["--save"])
                try:
                    result = run_child(__file__, arguments, args.threads, args.wait_policy, f"{side} {config}",
                                       fatal=False)
                except RuntimeError as e:
                    skipped[side] = str(e).splitlines()[-1]
                    print(e, file=sys.stderr)
                    return {}
                if "skipped" in result:
                    skipped[side] = result["skipped"]
                    return {}
                saved.add(side)
                return result

            times = take_turns(rounds, tuple(sides), measure)
            times.update({s: {} for s in SIDES if s not in times})
            check = []
            if "torch_fp32" in saved:
                for side in SIDES:
                    if side in saved and side != "torch_fp32":
                        err, comb = (relative_error(tmp, side, batches, n) for n in ("probabilities", "comb_outs"))
                        flag = "  <-- MISMATCH: broken export?" if side in CHECKED and err > TOLERANCE else ""
                        check.append(f"{SIDES[side][0]} {err:.1e} ({comb:.1e}){flag}")
        results[config] = (batches, times, flops)
        print(f"{config}: {flops / 1e9:.1f} GFLOPs per image; error vs torch fp32 (max |diff| / max |torch|: "
              f"probabilities (comb_outs)): {'; '.join(check) or 'n/a'}")
        for side in SIDES:
            if side in skipped and side not in missing:
                print(f"{config}: {SIDES[side][0]} skipped: {skipped[side]}")
        sys.stdout.flush()

    end = measure_peaks(peaks_module, args.threads, "end")
    if peaks and end:
        peaks = {k: max(peaks[k], end[k]) for k in peaks}
    print()
    rows = table_rows(results, peaks)
    print_table(rows, False)
    print(f"load (1/5/15 min) at the end {load()}; latency: median [min, max] ms; img/s: median [min, max]; "
          f"of peak: model GF/s and its share of the fp32 peak (fp32 columns) or the bf16 peak (bf16 columns); "
          f"ratios: OpenVINO time / herbs time (> 1: herbs faster)")
    if args.markdown:
        print()
        print_table(rows, True)


if __name__ == "__main__":
    main()
