"""Helpers to compare an engine HERBS net with the PyTorch reference (tests/reference_herbs.py):
the same weights through the state dict, then outputs, rankings, loss terms, gradients and
BatchNorm buffers side by side."""
import contextlib
import warnings

import numpy as np
import torch

from herbs.state import state_dict_from
from reference_herbs import herbs_loss

OUTPUT_NAMES = ([f"FPN1_layer{i}" for i in range(1, 5)] + [f"layer{i}" for i in range(1, 5)]
                + [f"select_layer{i}" for i in range(1, 5)] + [f"drop_layer{i}" for i in range(1, 5)] + ["comb_outs"])


def load_reference(ref, net):
    """Copies the engine's tensors into the reference by name (strict)."""
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict_from(net).items()}, strict=True)


def grads_of(net):
    grads = net.grads
    return {name: grads[offset:offset + size].reshape(shape).copy()
            for name, kind, shape, offset, size in net.tensors() if kind == "parameter"}


def assert_close(mine, theirs, what, rel, floor=1e-7):
    """max |mine - theirs| <= rel * max |theirs| + floor: float32 error relative to the tensor's scale."""
    mine, theirs = np.asarray(mine, np.float64), np.asarray(theirs, np.float64)
    assert mine.shape == theirs.shape, f"{what}: shape {mine.shape} != {theirs.shape}"
    scale = np.abs(theirs).max() if theirs.size else 0.0
    err = np.abs(mine - theirs).max() if theirs.size else 0.0
    assert err <= rel * scale + floor, f"{what}: max error {err:.3g} for scale {scale:.3g} (allowed {rel} relative)"


@contextlib.contextmanager
def torch_threads(n):
    """PyTorch with n threads for a while: tiny reference models run far faster on one thread
    than with a team spinning on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compare_step(net, ref, x, y, train, options=None, rel_out=2e-5, rel_grad=1e-4, threads=1):
    """One forward + objective + backward on both sides from the same weights; checks outputs,
    rankings, every loss term, every parameter gradient and every buffer afterwards.
    Tolerances: rel_out for outputs and losses, rel_grad for gradients (relative to each
    tensor's largest magnitude; see the callers for the float32 reasoning)."""
    options = options or {}
    load_reference(ref, net)
    net.zero_grad()
    out = net.forward(x, train=train)
    terms = net.loss(y, **options)
    net.backward({})

    ref.train(train)
    ref.zero_grad()
    with torch_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # KLDivLoss: reduction "mean" (the release's) is not "batchmean"
        ref_out, ranks = ref(torch.from_numpy(x))
        total, ref_terms = herbs_loss(ref_out, torch.from_numpy(y), **options)
        total.backward()

    assert set(ref_out) == {k for k in out if not k.startswith("rank_")}
    for name, value in ref_out.items():
        assert_close(out[name], value.detach().numpy(), name, rel_out)
    if ranks is not None:
        for i, r in enumerate(ranks, 1):
            np.testing.assert_array_equal(out[f"rank_layer{i}"], r.numpy(), err_msg=f"rank_layer{i}")
    assert set(terms) == set(ref_terms), (sorted(terms), sorted(ref_terms))
    for name, value in ref_terms.items():
        # + 1e-6: the refinement term at T = 64 is ~1e-5, a float32 sum of terms that cancel to ~1e-4
        value = float(value.detach())
        assert abs(terms[name] - value) <= rel_out * abs(value) + 1e-6, (name, terms[name], value)
    grads = grads_of(net)
    ref_params = dict(ref.named_parameters())
    assert set(grads) == set(ref_params)
    ref_grads = {name: p.grad.numpy() if p.grad is not None else np.zeros(p.shape, np.float32)
                 for name, p in ref_params.items()}
    # Some gradients are zero analytically (a bias right before a train-mode BatchNorm: its
    # gradient is a sum over rows that cancels exactly); both sides then return rounding noise of
    # the size of the summed terms, ~1e-6 of the model's largest gradient. Hence the floor.
    floor = 1e-5 * max(np.abs(g).max() for g in ref_grads.values())
    for name, want in ref_grads.items():
        assert_close(grads[name], want, f"grad {name}", rel_grad, floor)
    after = state_dict_from(net)
    for name, value in ref.state_dict().items():
        if name not in ref_params:  # buffers: BatchNorm running statistics and counters
            assert_close(after[name], value.numpy(), f"buffer {name}", rel_out)
    return out, terms
