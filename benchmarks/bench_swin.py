"""herbs's Swin backbone against the PyTorch reference (tests/reference_swin.py), same weights,
same thread count, in one run: forward (eval) and forward+backward (train, gradients on all four
taps), images/s as the median of repeats with their spread, and the peak resident memory of each
side. Every (implementation, setting, mode) runs in its own subprocess so that memory peaks do
not mix; the weights come from one herbs net, passed to both sides through an .npz file.

    python benchmarks/bench_swin.py            # Swin-T 224 px batch 8, Swin-L 384 px batch 1
    python benchmarks/bench_swin.py --quick    # smaller settings, a minute or so
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))

SETTINGS = {
    "full": [
        ("Swin-T 224 px, batch 8", {"variant": "tiny", "img_size": 224}, 8),
        ("Swin-L 384 px, batch 1", {"variant": "large", "img_size": 384}, 1),
    ],
    "quick": [
        ("Swin-T 224 px, batch 2", {"variant": "tiny", "img_size": 224}, 2),
        ("Swin-L 192 px (window 12), batch 1", {"variant": "large", "img_size": 192, "window_size": 12}, 1),
    ],
}


def rss_mb():
    """Current resident memory of this process (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(job):
    """Runs one measurement and prints a JSON line: seconds per repeat and memory."""
    config, batch, mode, threads = job["config"], job["batch"], job["mode"], job["threads"]
    weights = np.load(job["weights"])  # lazy: one tensor in memory at a time
    rng = np.random.default_rng(0)
    size = config["img_size"]
    images = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    if job["impl"] == "herbs":
        import herbs
        from herbs import _C
        herbs.set_num_threads(threads)
        net = _C.Net("swin", config, 0)
        for name, _, shape, offset, n in net.tensors():
            net.params[offset:offset + n] = weights[name].reshape(-1)
        grads = None

        def step():
            nonlocal grads
            if mode == "forward":
                net.forward(images, train=False)
                return
            net.zero_grad()
            out = net.forward(images, train=True)
            if grads is None:
                grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in out.items()}
            net.backward(grads)
    else:
        import torch
        import reference_swin
        torch.set_num_threads(threads)
        model = reference_swin.swin(**config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(weights[name]))
        x = torch.from_numpy(images)
        grads = None

        def step():
            nonlocal grads
            if mode == "forward":
                model.eval()
                with torch.no_grad():
                    model(x)
                return
            model.train()
            model.zero_grad()
            taps = model(x)
            if grads is None:
                grads = [torch.from_numpy(rng.standard_normal(t.shape).astype(np.float32)) for t in taps]
            sum((t * g).sum() for t, g in zip(taps, grads)).backward()

    before = rss_mb()
    for _ in range(job["warmup"]):
        step()
    times = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "peak_mb": peak, "model_mb": before}))


def measure(impl, config, batch, mode, threads, repeats, warmup, weights):
    job = dict(impl=impl, config=config, batch=batch, mode=mode, threads=threads, repeats=repeats, warmup=warmup,
               weights=weights)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} {mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller settings")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both sides")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    import herbs
    from herbs import _C
    import torch
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"date     {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine  {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}")
    print(f"threads  {args.threads} (herbs.set_num_threads / torch.set_num_threads)")
    print(f"herbs    {herbs.__version__}, {herbs.cpu_info()}")
    print(f"torch    {torch.__version__}")
    print(f"load     {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min) at start")
    print(f"timing   median of {repeats} repeats after 1 warm-up, [min, max]; memory = peak RSS of the process\n")
    header = f"{'setting':38} {'mode':14} {'herbs img/s':>22} {'torch img/s':>22} {'ratio':>6} {'herbs MB':>9} {'torch MB':>9}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for title, config, batch in SETTINGS["quick" if args.quick else "full"]:
            net = _C.Net("swin", config, 0)
            weights = os.path.join(tmp, "weights.npz")
            np.savez(weights, **{name: net.params[o:o + n].reshape(shape)
                                 for name, _, shape, o, n in net.tensors()})
            del net
            for mode in ("forward", "forward+backward"):
                rates, mems = {}, {}
                for impl in ("herbs", "torch"):
                    r = measure(impl, config, batch, mode, args.threads, repeats, 1, weights)
                    ips = [batch / t for t in r["times"]]
                    rates[impl] = (statistics.median(ips), min(ips), max(ips))
                    mems[impl] = r["peak_mb"]
                cell = {k: f"{v[0]:7.2f} [{v[1]:.2f}, {v[2]:.2f}]" for k, v in rates.items()}
                print(f"{title:38} {mode:14} {cell['herbs']:>22} {cell['torch']:>22} "
                      f"{rates['herbs'][0] / rates['torch'][0]:5.2f}x {mems['herbs']:9.0f} {mems['torch']:9.0f}",
                      flush=True)
    print(f"\nload     {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} at end")


if __name__ == "__main__":
    main()
