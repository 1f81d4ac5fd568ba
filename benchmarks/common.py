"""What every benchmark script shares: timing, the process's memory, the machine's name, the
subprocess per side, and the PyTorch reference of a herbs model."""
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def timed(step, repeats, warmup=1, cpu=None):
    """Wall-clock seconds of each of `repeats` calls of step(), after `warmup` untimed calls
    (first-touch memory, arena sizing, caches, the thread team). Given a list `cpu`, appends to it
    the process's CPU seconds (all threads) of each call."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return times


def memory_mb():
    """This process's peak resident set (VmHWM) in MB. Read from /proc rather than
    getrusage's ru_maxrss, which Linux carries across execve: a child would report at least its
    parent's peak. NaN where /proc is missing (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine():
    """'CPU model, N logical CPUs'."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def load():
    """The load averages over 1, 5 and 15 minutes, as text."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def model_step(model, x, classes, train, rng):
    """One call of the workload bench_ab.py and profile_gemms.py time on a herbs.Model: the
    prediction of images x (Model.predict: the eval-mode forward, image-level where it can be, and
    the ensemble), or with `train` bench_peers.py's training step (zero_grad, train_step on random
    labels, SGD with momentum and weight decay)."""
    if not train:
        return lambda: model.predict(x)
    from herbs.optim import SGD
    labels = rng.integers(0, classes, x.shape[0])
    optimizer = SGD(model.flat_parameters(), model.flat_gradients(), lr=1e-4, momentum=0.9, weight_decay=3e-4)

    def step():
        model.zero_grad()
        model.train_step(x, labels)
        optimizer.step()
    return step


def summary(values):
    """(median, min, max) of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def load_weights(net, weights):
    """Copies the arrays of a .npz file (or an already opened np.load) into an engine net by name,
    one tensor at a time (herbs.state.load_into holds every array before copying: a higher peak)."""
    import numpy as np
    state = np.load(weights) if isinstance(weights, str) else weights
    for name, kind, shape, offset, size in net.tensors():
        block = net.params if kind == "parameter" else net.buffers
        block[offset:offset + size] = state[name].reshape(-1)


def add_wait_policy_argument(parser):
    """--wait-policy: how the OpenMP threads of both sides wait at barriers."""
    parser.add_argument("--wait-policy", choices=["passive", "active", "default"], default="default",
                        help="OMP_WAIT_POLICY of both sides (default: each library's own, as a user gets it: "
                             "herbs' threads spin 1000 times before they sleep, PyTorch's OpenMP spins longer; "
                             "passive: both sleep at once, which oversubscribed cores need; active: both spin)")


def run_child(script, args, threads, wait_policy, what, fatal=True):
    """Runs `python script *args` as a measuring subprocess (its own memory peak and OpenMP runtime)
    with `threads` threads and the OpenMP wait policy, and returns the JSON of its last output
    line; a failure exits naming `what` with the child's error output (with fatal=False, raises
    RuntimeError with that message instead, for the caller to carry on without that side)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("GOMP_SPINCOUNT", None)
    if wait_policy == "default":
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = wait_policy
    done = subprocess.run([sys.executable, os.path.abspath(script), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        message = f"{what} failed:\n{done.stderr[-3000:]}"
        if fatal:
            sys.exit(message)
        raise RuntimeError(message)
    return json.loads(done.stdout.strip().splitlines()[-1])


def take_turns(rounds, sides, measure):
    """Runs measure(side) -> {key: list of numbers, "peak_mb": number} for every side in every
    round, the order reversed every other round so that a change of load falls on all sides, and
    merges the results per side: lists concatenated, "peak_mb" the largest."""
    merged = {side: {} for side in sides}
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            for key, value in measure(side).items():
                if key == "peak_mb":
                    merged[side][key] = max(merged[side].get(key, 0.0), value)
                else:
                    merged[side].setdefault(key, []).extend(value)
    return merged


def time_backbone(net, forward_x, train_x, repeats, warmup, seed):
    """An engine backbone's timed eval forward on forward_x and train step (forward in train mode,
    backward of fixed random output gradients) on train_x: {"forward", "train" (wall seconds per
    call), "forward_cpu", "train_cpu" (process CPU seconds), "peak_mb"}."""
    import numpy as np
    out = net.forward(train_x)
    rng = np.random.default_rng(seed)
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in out.items()}

    def train_step():
        net.zero_grad()
        net.forward(train_x, train=True)
        net.backward(grads)

    fwd_cpu, train_cpu = [], []
    fwd = timed(lambda: net.forward(forward_x), repeats, warmup, fwd_cpu)
    train = timed(train_step, repeats, warmup, train_cpu)
    return {"forward": fwd, "train": train, "forward_cpu": fwd_cpu, "train_cpu": train_cpu, "peak_mb": memory_mb()}


def time_torch_backbone(model, forward_x, train_x, repeats, warmup):
    """time_backbone's PyTorch side: a reference backbone (returning its taps) timed on the eval
    forward of forward_x and a train step (zero_grad, forward, backward of fixed random tap
    gradients) on train_x, with the same keys."""
    import numpy as np
    import torch
    model.eval()
    with torch.no_grad():
        taps = model(train_x)
    rng = np.random.default_rng(1)
    grads = [torch.from_numpy(rng.standard_normal(t.shape).astype(np.float32)) for t in taps]

    def forward():
        with torch.no_grad():
            model(forward_x)

    def train_step():
        model.zero_grad()
        torch.autograd.backward(model(train_x), grads)

    fwd_cpu, train_cpu = [], []
    fwd = timed(forward, repeats, warmup, fwd_cpu)
    model.train()
    train = timed(train_step, repeats, warmup, train_cpu)
    return {"forward": fwd, "train": train, "forward_cpu": fwd_cpu, "train_cpu": train_cpu, "peak_mb": memory_mb()}

def print_herbs_torch_rows(config, batch, results, width):
    """The rows of one config and batch of a herbs-against-PyTorch table: train and infer img/s and
    latency ms, median (min-max) per side, the ratio PyTorch time / herbs time, and the train
    peaks in MB; config left-justified in `width` characters."""
    from statistics import median
    for measure, unit in (("train", "img/s"), ("infer", "img/s"), ("latency", "ms")):
        h, t = results["herbs"][measure], results["torch"][measure]
        ratio = median(t) / median(h)
        if unit == "ms":
            fmt = lambda v: f"{1e3 * median(v):8.1f} ({1e3 * min(v):.0f}-{1e3 * max(v):.0f}) ms"  # noqa: E731
        else:
            fmt = lambda v: f"{batch / median(v):7.2f} ({batch / max(v):.2f}-{batch / min(v):.2f})"  # noqa: E731
        mem = f"{results['herbs']['peak_mb']:.0f}/{results['torch']['peak_mb']:.0f}" if measure == "train" else ""
        print(f"{config:<{width}}{batch:>6}  {measure:<9}{fmt(h):>22}{fmt(t):>22}{ratio:>7.2f}x{mem:>17}", flush=True)


BACKBONE_SIDES = ("herbs", "torch", "torch_channels_last")


def backbone_sides(script, args, make_weights, child_args, run_herbs, run_torch):
    """The two roles of a backbone benchmark (herbs against PyTorch NCHW and channels_last). A child
    (args.side set) runs its side, run_herbs(args, weights) or run_torch(args, weights,
    channels_last), prints the result as JSON and returns None. The parent makes the weights once
    (make_weights(args, path), in a temporary directory), runs the sides in turns, each a child
    `script --side S --weights W *child_args`, and returns {side: merged results}."""
    if args.side:
        result = (run_herbs(args, args.weights) if args.side == "herbs"
                  else run_torch(args, args.weights, args.side == "torch_channels_last"))
        print(json.dumps(result))
        return None
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        make_weights(args, weights)
        return take_turns(args.rounds, BACKBONE_SIDES, lambda side: run_child(
            script, child_args + ["--weights", weights, "--side", side], args.threads, args.wait_policy, side))

def torch_model(c, state):
    """The PyTorch reference (tests/reference_herbs.py on tests/reference_swin.py,
    tests/reference_resnet.py or tests/reference_vit.py) with a herbs model's configuration `c`
    (Model.config) and weights (its state dict)."""
    tests = str(pathlib.Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import reference_resnet
    import reference_swin
    import reference_vit
    from herbs_compare import load_reference
    from reference_herbs import HERBS

    if c["backbone"] == "vit":  # the release's build_vit16: its own fpn size and tokens per tap
        keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "qkv_bias", "taps")
        backbone = reference_vit.vit(**{k: c[k] for k in keys})
        tokens = [1 + (c["img_size"] // c["patch_size"]) ** 2] * 4
        ref = HERBS(backbone, [c["embed_dim"]] * 4, tokens, c["num_classes"], list(c["num_selects"]),
                    fpn_size=c["fpn_size"])
        load_reference(ref, state)
        return ref
    if c["backbone"] == "swin":
        dims, depths, heads = reference_swin.VARIANTS[c["variant"]]
        backbone = reference_swin.swin(img_size=c["img_size"], embed_dim=dims, depths=depths, num_heads=heads,
                                       window_size=c["window_size"])
        patch = c["img_size"] // 4
        tokens = [(patch // 2) ** 2, (patch // 4) ** 2, (patch // 8) ** 2, (patch // 8) ** 2]
        channels = [dims * 2, dims * 4, dims * 8, dims * 8]
        cnn = False
    else:
        backbone = reference_resnet.ResNet(c.get("depths", (3, 4, 6, 3)))
        side = c["img_size"] // 4
        tokens = [side ** 2, (side // 2) ** 2, (side // 4) ** 2, (side // 8) ** 2]
        channels = [256, 512, 1024, 2048]
        cnn = True
    keep = [s * n // 9 for s, n in zip(tokens, (1, 2, 4, 2))]  # herbs' default num_selects
    assert sum(keep) == state["combiner.param_pool0.weight"].shape[1]
    ref = HERBS(backbone, channels, tokens, c["num_classes"], keep, cnn=cnn)
    load_reference(ref, state)
    return ref
