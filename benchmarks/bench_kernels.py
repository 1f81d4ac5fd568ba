"""herbs' memory-bound ResNet kernels against their PyTorch equivalents, one kernel call at a time,
on ResNet-50 stage-1 shapes (batch 8, 56x56, NHWC / channels_last): BatchNorm (+ReLU) in train
mode forward and backward, ReLU, the residual add+ReLU, the stem's max pool and the NCHW -> NHWC
move of the images. Milliseconds per call as the median of repeats with [min, max]; the ratio is
PyTorch's time over herbs' (above 1: herbs is faster).

Each side runs in its own subprocess (two OpenMP runtimes in one process would steal each
other's cores while spinning), and the sides take turns over several rounds, so a change of load
on a shared machine does not favour one of them. herbs is the installed one (or the one PYTHONPATH
points at, so two builds can be compared); HERBS_ISA picks its path.

    python benchmarks/bench_kernels.py [--threads N] [--rounds R] [--repeats K]
"""
import argparse
import json
import os
import sys

from common import add_wait_policy_argument, load, machine, run_child, summary, take_turns, timed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, H, W, C = 8, 56, 56, 256  # ResNet-50 stage 1 after its first block
N = B * H * W
POOL = (8, 112, 112, 64)  # the stem's max pool input, 3x3 stride 2 padding 1
IMAGES = (8, 3, 224, 224)
KERNELS = ["bn train forward", "bn train backward", "bn+relu train forward", "bn+relu train backward",
           "relu forward", "relu backward", "add+relu forward", "add+relu backward", "maxpool forward",
           "maxpool backward", "nchw->nhwc forward", "nchw->nhwc backward"]


def herbs_steps():
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from ckernels import call

    f32 = dict(dtype=np.float32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C), np.float32)
    g = rng.standard_normal((N, C), np.float32)
    y, dx = np.empty_like(x), np.zeros_like(x)
    w, b = rng.standard_normal(C, np.float32), rng.standard_normal(C, np.float32)
    mean, rstd, rm, rv = (np.zeros(C, np.float32) for _ in range(4))
    dw, db = np.zeros(C, np.float32), np.zeros(C, np.float32)
    n = x.size
    pb, ph, pw, pc = POOL
    p_in = rng.standard_normal(POOL, np.float32)
    p_out, p_arg = np.empty((pb, ph // 2, pw // 2, pc), np.float32), np.empty((pb, ph // 2, pw // 2, pc), np.int32)
    p_grad, p_din = rng.standard_normal(p_out.shape, np.float32), np.zeros_like(p_in)
    img = rng.standard_normal(IMAGES, np.float32)
    img_nhwc, img_grad = np.empty((8, 224, 224, 3), np.float32), np.zeros_like(img)

    def bn_fwd(name):
        return lambda: call(name, y, mean, rstd, rm, rv, x, w, b, N, C, 1e-5, 0.1, **f32)

    call("batchnorm_relu_forward_train", y, mean, rstd, rm, rv, x, w, b, N, C, 1e-5, 0.1, **f32)
    relu_out = y.copy()
    call("maxpool2d_forward", p_out, p_arg, p_in, pb, ph, pw, pc, 3, 2, 1, **f32)
    return {
        "bn train forward": bn_fwd("batchnorm_forward_train"),
        "bn train backward": lambda: call("batchnorm_backward", dx, dw, db, g, None, x, w, mean, rstd, N, C, 0, **f32),
        "bn+relu train forward": bn_fwd("batchnorm_relu_forward_train"),
        "bn+relu train backward": lambda: call("batchnorm_backward", dx, dw, db, g, relu_out, x, w, mean, rstd, N, C,
                                               0, **f32),
        "relu forward": lambda: call("relu_forward", y, x, n, **f32),
        "relu backward": lambda: call("relu_backward", dx, g, relu_out, n, 0, **f32),
        "add+relu forward": lambda: call("add_relu_forward", y, x, g, n, **f32),
        "add+relu backward": lambda: call("add_relu_backward", None, dx, g, relu_out, n, 0, **f32),
        "maxpool forward": lambda: call("maxpool2d_forward", p_out, p_arg, p_in, pb, ph, pw, pc, 3, 2, 1, **f32),
        "maxpool backward": lambda: call("maxpool2d_backward", p_din, p_grad, p_arg, pb, ph, pw, pc, 3, 2, 1, **f32),
        "nchw->nhwc forward": lambda: call("nchw_to_nhwc_forward", img_nhwc, img, *IMAGES, **f32),
        "nchw->nhwc backward": lambda: call("nchw_to_nhwc_backward", img_grad, img_nhwc, *IMAGES, **f32),
    }


def torch_steps():
    """The same operations as PyTorch runs them in a channels_last ResNet (outputs allocated by the
    op, as autograd does)."""
    import torch
    aten = torch.ops.aten
    cl = torch.channels_last
    x = torch.randn(B, C, H, W).contiguous(memory_format=cl)
    g = torch.randn(B, C, H, W).contiguous(memory_format=cl)
    w, b = torch.randn(C), torch.randn(C)
    rm, rv = torch.zeros(C), torch.ones(C)
    y, mean, invstd = aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    relu_out = torch.relu(y)
    mask = [True, True, True]
    p_in = torch.randn(POOL[0], POOL[3], POOL[1], POOL[2]).contiguous(memory_format=cl)
    p_out, p_arg = aten.max_pool2d_with_indices(p_in, [3, 3], [2, 2], [1, 1])
    p_grad = torch.randn_like(p_out)
    img = torch.randn(IMAGES)
    img_nhwc = img.contiguous(memory_format=cl)

    def bn_relu_backward():
        aten.native_batch_norm_backward(aten.threshold_backward(g, relu_out, 0), x, w, rm, rv, mean, invstd, True,
                                        1e-5, mask)

    return {
        "bn train forward": lambda: aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5),
        "bn train backward": lambda: aten.native_batch_norm_backward(g, x, w, rm, rv, mean, invstd, True, 1e-5, mask),
        "bn+relu train forward": lambda: torch.relu_(aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)[0]),
        "bn+relu train backward": bn_relu_backward,
        "relu forward": lambda: torch.relu(x),
        "relu backward": lambda: aten.threshold_backward(g, relu_out, 0),
        "add+relu forward": lambda: torch.relu_(x + g),
        "add+relu backward": lambda: aten.threshold_backward(g, relu_out, 0),
        "maxpool forward": lambda: aten.max_pool2d_with_indices(p_in, [3, 3], [2, 2], [1, 1]),
        "maxpool backward": lambda: aten.max_pool2d_with_indices_backward(p_grad, p_in, [3, 3], [2, 2], [1, 1],
                                                                         [1, 1], False, p_arg),
        "nchw->nhwc forward": lambda: img.contiguous(memory_format=cl),
        "nchw->nhwc backward": lambda: img_nhwc.contiguous(),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=10, help="timed calls per kernel per round")
    p.add_argument("--rounds", type=int, default=3, help="turns each side takes")
    add_wait_policy_argument(p)
    p.add_argument("--side", choices=["herbs", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.side:  # a child: one side, seconds per call as JSON on stdout
        if args.side == "herbs":
            import herbs
            herbs.set_num_threads(args.threads)
            steps = herbs_steps()
        else:
            import torch
            torch.set_num_threads(args.threads)
            steps = torch_steps()
        print(json.dumps({name: timed(steps[name], args.repeats) for name in KERNELS}))
        return

    load_before = load()
    child = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    results = take_turns(args.rounds, ("herbs", "torch"), lambda side: run_child(
        __file__, ["--side", side] + child, args.threads, args.wait_policy, side))
    isa = os.environ.get("HERBS_ISA", "best")
    print(f"threads {args.threads}, OMP_WAIT_POLICY {args.wait_policy} (both sides), herbs ISA {isa}; "
          f"median of {args.rounds} rounds x {args.repeats} calls, ms [min, max]; load (1/5/15 min) before "
          f"{load_before}, after {load()}\nmachine: {machine()}")
    print(f"{'kernel':24s}{'herbs':>22s}{'torch':>22s}{'torch/herbs':>13s}")
    for name in KERNELS:
        cells = {side: [1e3 * v for v in summary(r[name])] for side, r in results.items()}
        text = "".join(f"{m:8.3f} [{lo:6.3f},{hi:6.3f}]".rjust(22) for m, lo, hi in cells.values())
        print(f"{name:24s}{text}{cells['torch'][0] / cells['herbs'][0]:12.2f}x")


if __name__ == "__main__":
    main()
