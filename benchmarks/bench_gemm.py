#!/usr/bin/env python3
"""herbs' GEMM against NumPy's BLAS (fp32) or PyTorch's oneDNN (bf16), side by side, at 1 and 2
threads.

For every shape it prints GFLOP/s of each side (median of repeats, with min-max), the ratio of
herbs' to the reference's and herbs' fraction of the machine's peak: the fp32 FMA peak, or with
--precision bf16 the bf16 dot-product peak, both measured here at each thread count
(benchmarks/peaks.py: loops of 16 independent vfmadd231ps / vdpbf16ps zmm chains; --peak gives
one instead, GF/s per thread). bf16: herbs multiplies fp32 operands rounded to bf16 while packing,
with fp32 accumulation and output, once with B packed in each call and once with B packed once
before (a weight: what a model's forward does; the % of peak is this one's); PyTorch multiplies
operands converted to bf16 outside the timing, writing bf16.

Each thread count runs in a child process that sets OPENBLAS_NUM_THREADS (so threadpoolctl
is not needed; when installed it is only asked which BLAS and how many threads it uses) and
herbs.set_num_threads. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the
environment before NumPy is loaded: they would make OpenBLAS pick a slower kernel, and they
do not affect herbs, which does not use BLAS.

    python benchmarks/bench_gemm.py            # everything, 1 and 2 threads
    python benchmarks/bench_gemm.py --quick    # fewer repeats, no 2048 square
    python benchmarks/bench_gemm.py --markdown # the table as Markdown (for README.md)
    python benchmarks/bench_gemm.py --precision bf16 --threads 2
"""
import os
import sys

BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(v in os.environ for v in BLAS_VARIABLES):  # before NumPy loads OpenBLAS: start again without them
    os.execve(sys.executable, [sys.executable] + sys.argv,
              {k: v for k, v in os.environ.items() if k not in BLAS_VARIABLES})

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import peaks  # noqa: E402
from common import load, machine  # noqa: E402

# (label, M, N, K, trans_a, trans_b, batch). Linear layers run forward as X·Wᵀ (trans_b=1, W is
# [out, in]); backward as dX = dY·W (0, 0) and dW = dYᵀ·X (1, 0).
SQUARES = [(f"square {n}", n, n, n, 0, 0, 1) for n in (256, 512, 1024, 2048)]
MODEL = [
    ("swin-t qkv fwd", 25088, 288, 96, 0, 1, 1),
    ("swin-t qkv dX", 25088, 96, 288, 0, 0, 1),
    ("swin-t qkv dW", 288, 96, 25088, 1, 0, 1),
    ("swin-t fc1 fwd", 25088, 384, 96, 0, 1, 1),
    ("swin-t fc2 fwd", 25088, 96, 384, 0, 1, 1),
    ("swin-t fc2 dW", 96, 384, 25088, 1, 0, 1),
    ("swin-t s3 fc2 fwd", 6272, 192, 768, 0, 1, 1),
    ("swin-t s3 qkv fwd", 1568, 1152, 384, 0, 1, 1),
    ("swin-t s4 fc2 fwd", 392, 768, 3072, 0, 1, 1),
    ("swin-t s4 fc2 dX", 392, 3072, 768, 0, 0, 1),
    ("resnet 1x1 64>256", 25088, 256, 64, 0, 1, 1),
    ("resnet 1x1 512>128", 6272, 128, 512, 0, 1, 1),
    ("resnet 1x1 2048>512", 392, 512, 2048, 0, 1, 1),
    ("swin-l qkv fwd", 2304, 1152, 384, 0, 1, 1),
    ("swin-l qkv fwd (NN)", 2304, 1152, 384, 0, 0, 1),
    ("swin-l s1 fc1 fwd", 2304, 768, 192, 0, 1, 1),
    ("swin-l s3 fc2 fwd", 576, 384, 1536, 0, 1, 1),
    ("swin-l s4 fc1 fwd", 144, 1536, 6144, 0, 1, 1),
]
ATTENTION = [
    ("swin-t attn q.kT", 49, 49, 32, 0, 1, 1536),
    ("swin-t attn a.v", 49, 32, 49, 0, 0, 1536),
    ("swin-l attn q.kT", 144, 144, 32, 0, 1, 384),
    ("swin-l attn a.v", 144, 32, 144, 0, 0, 384),
]


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture')} "
                     f"({i['num_threads']} threads)" for i in blas) or "no BLAS found"


def aligned_zeros(shape):
    """A zero float32 array starting on a 64-byte boundary, as herbs' arena and PyTorch's allocator
    give theirs (NumPy aligns to 16 bytes only: a C whose rows start mid cache line makes every
    64-byte store of a micro-kernel touch two lines, which cost herbs 290 -> 340 GF/s on Swin-T's
    stage-1 products, bf16, Zen 4, 2 threads)."""
    count = int(np.prod(shape))
    buffer = np.zeros(count + 16, np.float32)
    start = (-buffer.ctypes.data % 64) // 4
    return buffer[start:start + count].reshape(shape)


def operands(rng, m, n, k, ta, tb, batch):
    shape_a = (k, m) if ta else (m, k)
    shape_b = (n, k) if tb else (k, n)
    if batch > 1:
        shape_a, shape_b = (batch,) + shape_a, (batch,) + shape_b
    a, b = aligned_zeros(shape_a), aligned_zeros(shape_b)
    a[...] = rng.uniform(-1, 1, shape_a)
    b[...] = rng.uniform(-1, 1, shape_b)
    return a, b, aligned_zeros(((batch,) if batch > 1 else ()) + (m, n))


def herbs_calls(a, b, c, ta, tb, batch, precision):
    """{side: call} of herbs at the precision: fp32, or bf16 with B packed in the call and, for a
    single product, packed once before (a weight)."""
    from herbs import _C
    if precision == "fp32":
        if batch > 1:
            return {"herbs": lambda: _C.gemm_batched(a, b, c, trans_a=ta, trans_b=tb)}
        return {"herbs": lambda: _C.gemm(a, b, c, trans_a=ta, trans_b=tb)}
    if batch > 1:
        return {"herbs": lambda: _C.gemm_bf16_batched(a, b, c, trans_a=ta, trans_b=tb)}
    packed = _C.gemm_prepack_b(b, trans_b=tb, bf16=True)
    return {"herbs": lambda: _C.gemm_bf16(a, b, c, trans_a=ta, trans_b=tb),
            "herbs packed B": lambda: _C.gemm_prepacked(a, packed, c.shape[-1], c, trans_a=ta)}


def reference_call(a, b, c, ta, tb, batch, precision):
    """NumPy's matmul (fp32), or PyTorch's on bf16 copies of the operands (bf16)."""
    opa = np.swapaxes(a, -1, -2) if ta else a
    opb = np.swapaxes(b, -1, -2) if tb else b
    if precision == "fp32":
        return lambda: np.matmul(opa, opb, out=c)
    import torch
    ta_, tb_ = (torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16) for x in (a, b))
    opa_, opb_ = (x.transpose(-1, -2) if t else x for x, t in ((ta_, ta), (tb_, tb)))
    out = torch.empty(c.shape, dtype=torch.bfloat16)
    return lambda: torch.matmul(opa_, opb_, out=out)


def cpu_seconds():
    """(CPU seconds all processes spent busy, CPU seconds of this process), or None off Linux.
    Their difference over a measurement is the load other processes put on the machine."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:8]]
    except OSError:
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # user, nice, system, irq, softirq, steal
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def other_cpu_seconds(before, after):
    """CPU seconds other processes used between two cpu_seconds() readings."""
    return (after[0] - before[0]) - (after[1] - before[1])


def wait_for_quiet(limit, threshold=0.2, window=1.0):
    """Waits up to `limit` seconds for a `window` in which other processes keep fewer than
    `threshold` CPUs busy (a shared machine)."""
    deadline = time.perf_counter() + limit
    while True:
        before = cpu_seconds()
        time.sleep(window)
        quiet = before is None or other_cpu_seconds(before, cpu_seconds()) < threshold * window
        if quiet or time.perf_counter() > deadline:
            return


def calls_per_sample(fn, min_time):
    """How many calls of fn (already warm) last about min_time seconds."""
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time / 4 or calls < 2:
        fn()
        calls += 1
    return max(1, int(min_time / ((time.perf_counter() - start) / calls)))


def measure(fns, flops, repeats, min_time, pause):
    """{name: [GF/s per sample]} and the other load, for the functions in `fns` taking turns
    sample by sample (so that a change of load on the machine hits all of them alike), with a
    pause after each sample so that spinning worker threads (OpenMP's, OpenBLAS's) sleep before
    the other library runs."""
    calls = {}
    for name, fn in fns.items():
        fn()
        calls[name] = calls_per_sample(fn, min_time)
        time.sleep(pause)
    samples = {name: [] for name in fns}
    before, start = cpu_seconds(), time.perf_counter()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append(flops * calls[name] / (time.perf_counter() - t) / 1e9)
            time.sleep(pause)
    after, seconds = cpu_seconds(), time.perf_counter() - start
    other = float("nan") if before is None else max(0.0, other_cpu_seconds(before, after)) / seconds
    return samples, other


def child(args):
    """Runs every shape at args.child threads and prints one JSON line per shape."""
    import herbs
    herbs.set_num_threads(args.child)
    if args.precision == "bf16":
        import torch
        torch.set_num_threads(args.child)
        reference = f"torch {torch.__version__} (bf16)"
    else:
        reference = f"numpy {np.__version__}: {blas_info()}"
    rng = np.random.default_rng(0)
    print(json.dumps({"reference": reference, "herbs": herbs.cpu_info()}), flush=True)
    for label, m, n, k, ta, tb, batch in shapes(args):
        a, b, c = operands(rng, m, n, k, ta, tb, batch)
        fns = herbs_calls(a, b, c, ta, tb, batch, args.precision)
        fns["reference"] = reference_call(a, b, c, ta, tb, batch, args.precision)
        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet)
        row, other = measure(fns, 2.0 * m * n * k * batch, args.repeats, args.min_time, args.pause)
        row.update(label=label, shape=[m, n, k, ta, tb, batch], other=other)
        print(json.dumps(row), flush=True)


def shapes(args):
    squares = [s for s in SQUARES if not (args.quick and s[1] > 1024)]
    return squares + MODEL + ATTENTION


def spread(samples):
    return f"{min(samples):.0f}-{max(samples):.0f}"


def describe(shape):
    m, n, k, ta, tb, batch = shape
    ops = "NT"[ta] + "NT"[tb]
    return f"{m}x{n}x{k} {ops}" + (f" x{batch}" if batch > 1 else "")


def table(rows, peak, reference, markdown):
    """One line per shape: each side's GF/s, herbs' best over the reference's, herbs' best as a
    share of `peak` (GF/s of all threads)."""
    sides = ["herbs", "herbs packed B", "reference"]
    head = ["shape", "MxNxK op"]
    for side in sides:
        head += [f"{reference if side == 'reference' else side} GF/s", "(min-max)"]
    head += ["herbs/" + reference, "% peak", "other load"]
    lines = []
    for r in rows:
        line = [r["label"], describe(r["shape"])]
        for side in sides:
            line += [f"{statistics.median(r[side]):.0f}", spread(r[side])] if side in r else ["-", ""]
        best = statistics.median(r.get("herbs packed B", r["herbs"]))
        line += [f"{best / statistics.median(r['reference']):.2f}", f"{100 * best / peak:.0f}%" if peak else "-",
                 f"{r['other']:.2f}"]
        lines.append(line)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    fmt = lambda line: "  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
    return "\n".join([fmt(head)] + [fmt(line) for line in lines])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--quick", action="store_true", help="3 short repeats, squares up to 1024")
    parser.add_argument("--repeats", type=int, default=None, help="samples per measurement (default 7, quick 3)")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per sample (default 0.2, quick 0.05)")
    parser.add_argument("--pause", type=float, default=0.15, help="seconds of rest after each sample (default 0.15)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="fp32 against NumPy, or bf16 against PyTorch (default fp32)")
    parser.add_argument("--peak", type=float, default=None,
                        help="the peak per thread in GF/s for the %%-of-peak column (default: measured here, at each "
                             "thread count, for the precision)")
    parser.add_argument("--filter", default="", help="only shapes whose label contains this text")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each shape, wait up to SECONDS for other processes to leave the CPUs idle")
    parser.add_argument("--isa", default="", help="herbs' instruction set (avx512, avx2, portable; default: the best)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.min_time = args.min_time or (0.05 if args.quick else 0.2)
    if args.child:
        global SQUARES, MODEL, ATTENTION
        SQUARES, MODEL, ATTENTION = ([s for s in group if args.filter in s[0]] for group in (SQUARES, MODEL, ATTENTION))
        return child(args)

    print(f"machine: {machine()}; load (1/5/15 min) {load()} at start")
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"median of {args.repeats} samples of >= {args.min_time:g} s, min-max in brackets; 'other load': CPUs "
          f"kept busy by other processes over the row's samples and pauses, from /proc/stat")
    for threads in [int(t) for t in args.threads.split(",")]:
        peak = args.peak * threads if args.peak else peaks.measure(threads)[args.precision]
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
        if "OMP_WAIT_POLICY" not in env:  # herbs' default, for PyTorch's OpenMP as well: its threads would
            env.setdefault("GOMP_SPINCOUNT", "1000")  # spin on through herbs' samples otherwise
        if args.isa:
            env["HERBS_ISA"] = args.isa
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(threads), "--repeats", str(args.repeats),
               "--min-time", str(args.min_time), "--pause", str(args.pause), "--filter", args.filter,
               "--wait-quiet", str(args.wait_quiet), "--precision", args.precision]
        if args.quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"the {threads}-thread run failed:\n{out.stderr}")
        header, *rows = [json.loads(line) for line in out.stdout.splitlines()]
        kernel = header["herbs"]["bf16_gemm_kernel" if args.precision == "bf16" else "gemm_kernel"]
        reference = "torch" if args.precision == "bf16" else "numpy"
        print(f"\n{threads} thread(s): herbs {kernel} ({header['herbs']['threads']} threads); {header['reference']}; "
              f"{args.precision} peak {peak:.0f} GF/s ({'--peak' if args.peak else 'measured'}); load (1/5/15 min) "
              f"{load()} after")
        print(table(rows, peak, reference, args.markdown))


if __name__ == "__main__":
    main()
