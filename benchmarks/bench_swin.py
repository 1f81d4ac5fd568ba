"""herbs's Swin backbone against the PyTorch reference (tests/reference_swin.py), same weights,
same thread count, in one run: forward (eval; PyTorch under no_grad) and forward+backward (train,
gradients on all four taps), images/s with their spread, and the peak resident memory of each
side. Every measurement runs in its own subprocess so that memory peaks do not mix, and the
sides alternate over several rounds so that a shared machine's changing load hits both; the
weights come from one herbs net, passed to both sides through an .npz file.

    python benchmarks/bench_swin.py            # Swin-T 224 px batch 8, Swin-L 384 px batch 1
    python benchmarks/bench_swin.py --quick    # smaller settings, a minute or so
"""
import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import (add_wait_policy_argument, load, load_weights, machine, memory_mb, run_child,  # noqa: E402
                    take_turns, timed)

WARMUP = 2  # steps before timing: herbs sizes its arena on the first and touches it on the second

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
        load_weights(net, weights)
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

    times = timed(step, job["repeats"], job["warmup"])
    print(json.dumps({"times": times, "peak_mb": memory_mb()}))


def measure(impl, config, batch, mode, threads, repeats, warmup, weights, wait_policy):
    job = dict(impl=impl, config=config, batch=batch, mode=mode, threads=threads, repeats=repeats, warmup=warmup,
               weights=weights)
    return run_child(__file__, ["--child", json.dumps(job)], threads, wait_policy, f"{impl} {mode}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller settings")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both sides")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per side, alternating herbs and torch")
    add_wait_policy_argument(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    import herbs
    from herbs import _C
    from herbs.state import state_dict_from
    import torch
    repeats = args.repeats or 3
    print(f"date     {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine  {machine()}")
    print(f"threads  {args.threads} (herbs.set_num_threads / torch.set_num_threads), "
          f"OMP_WAIT_POLICY {args.wait_policy} for both")
    print(f"herbs    {herbs.__version__}, {herbs.cpu_info()}")
    print(f"torch    {torch.__version__}")
    print(f"load     {load()} (1, 5, 15 min) at start")
    print(f"timing   {args.rounds} rounds of a herbs and a torch process (which first alternates), each {repeats} "
          f"timed steps after {WARMUP} warm-ups;\n         images/s: median [min, max] over all steps; ratio: median [min, max] of the rounds' "
          f"ratios;\n         memory: peak RSS of a process (largest over rounds)\n")
    header = (f"{'setting':38} {'mode':16} {'herbs img/s':>22} {'torch img/s':>22} {'herbs/torch':>20} "
              f"{'herbs MB':>9} {'torch MB':>9}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for title, config, batch in SETTINGS["quick" if args.quick else "full"]:
            net = _C.Net("swin", config, 0)
            weights = os.path.join(tmp, "weights.npz")
            np.savez(weights, **state_dict_from(net))
            del net
            for mode in ("forward", "forward+backward"):
                def side(impl):
                    r = measure(impl, config, batch, mode, args.threads, repeats, WARMUP, weights, args.wait_policy)
                    ips = [batch / t for t in r["times"]]
                    return {"ips": ips, "round_median": [statistics.median(ips)], "peak_mb": r["peak_mb"]}

                res = take_turns(args.rounds, ("herbs", "torch"), side)
                ratios = [h / t for h, t in zip(res["herbs"]["round_median"], res["torch"]["round_median"])]
                cell = {k: f"{statistics.median(v['ips']):7.2f} [{min(v['ips']):.2f}, {max(v['ips']):.2f}]"
                        for k, v in res.items()}
                ratio = f"{statistics.median(ratios):5.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]"
                print(f"{title:38} {mode:16} {cell['herbs']:>22} {cell['torch']:>22} {ratio:>20} "
                      f"{res['herbs']['peak_mb']:9.0f} {res['torch']['peak_mb']:9.0f}", flush=True)
    print(f"\nload     {load()} at end")


if __name__ == "__main__":
    main()
