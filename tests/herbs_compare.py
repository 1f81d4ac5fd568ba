"""Helpers to compare an engine HERBS net with the PyTorch reference (tests/reference_herbs.py):
the same weights through the state dict, then outputs, rankings, loss terms, gradients and
BatchNorm buffers side by side."""
import contextlib
import copy
from collections.abc import Mapping
import fnmatch
import warnings

import numpy as np
import torch

from herbs.state import state_dict_from
from reference_herbs import herbs_loss

OUTPUT_NAMES = ([f"FPN1_layer{i}" for i in range(1, 5)] + [f"layer{i}" for i in range(1, 5)]
                + [f"select_layer{i}" for i in range(1, 5)] + [f"drop_layer{i}" for i in range(1, 5)] + ["comb_outs"])


# Buffers a PyTorch Swin (old timm) keeps in its state dict that the engine recomputes instead
RECOMPUTED = ("*.attn_mask", "*.relative_position_index")


def load_reference(ref, state):
    """Copies tensors into the reference by name — `state` is an engine net (its tensors) or a
    name -> array mapping: every key must match, except the reference's recomputed Swin buffers,
    which the engine does not store."""
    arrays = state if isinstance(state, Mapping) else state_dict_from(state)
    result = ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(any(fnmatch.fnmatchcase(k, p) for p in RECOMPUTED) for k in result.missing_keys), result.missing_keys


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


def run_reference(ref, x, y, train, options, dtype):
    """(outputs, rankings, loss terms, parameter gradients) of the reference in `dtype`."""
    ref.train(train)
    ref.zero_grad()
    with torch_threads(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # KLDivLoss: reduction "mean" (the release's) is not "batchmean"
        out, ranks = ref(torch.from_numpy(x).to(dtype))
        total, terms = herbs_loss(out, torch.from_numpy(y), **options)
        total.backward()
    grads = {name: p.grad.double().numpy() if p.grad is not None else np.zeros(p.shape)
             for name, p in ref.named_parameters()}
    return ({k: v.detach().double().numpy() for k, v in out.items()}, ranks,
            {k: float(v.detach()) for k, v in terms.items()}, grads)


def compare_step(net, ref, x, y, train, options=None, rel_out=2e-5, rel_grad=1e-4):
    """One forward + objective + backward on both sides from the same weights; checks outputs,
    rankings, every loss term, every parameter gradient and every buffer afterwards.

    The PyTorch reference runs twice: in float32 (rankings, loss terms and BatchNorm buffers must
    match it) and in float64, which arbitrates outputs and gradients: the engine's error against
    float64 must be within rel_out / rel_grad of each tensor's largest magnitude, or else no more
    than 4x PyTorch float32's own error there (deep backbones in train mode amplify float32
    rounding: both implementations then sit ~1e-3 from float64, equally)."""
    options = options or {}
    load_reference(ref, net)
    ref64 = copy.deepcopy(ref).double()
    net.zero_grad()
    out = net.forward(x, train=train)
    terms = net.loss(y, **options)
    net.backward({})
    out32, ranks, terms32, grads32 = run_reference(ref, x, y, train, options, torch.float32)
    out64, _, _, grads64 = run_reference(ref64, x, y, train, options, torch.float64)

    def check(mine, want32, want64, what, rel, floor):
        mine = np.asarray(mine, np.float64)
        assert mine.shape == want64.shape, f"{what}: shape {mine.shape} != {want64.shape}"
        if not want64.size:
            return
        err, err32 = np.abs(mine - want64).max(), np.abs(want32 - want64).max()
        allowed = max(rel * np.abs(want64).max() + floor, 4 * err32)
        assert err <= allowed, f"{what}: error {err:.3g} against float64 (PyTorch float32: {err32:.3g}; allowed {allowed:.3g})"

    assert set(out32) == {k for k in out if not k.startswith("rank_")}
    for name in out32:
        check(out[name], out32[name], out64[name], name, rel_out, 1e-7)
    if ranks is not None:
        for i, r in enumerate(ranks, 1):
            np.testing.assert_array_equal(out[f"rank_layer{i}"], r.numpy(), err_msg=f"rank_layer{i}")
    assert set(terms) == set(terms32), (sorted(terms), sorted(terms32))
    for name, value in terms32.items():
        # + 1e-6: the refinement term at T = 64 is ~1e-5, a float32 sum of terms that cancel to ~1e-4
        assert abs(terms[name] - value) <= rel_out * abs(value) + 1e-6, (name, terms[name], value)
    grads = grads_of(net)
    assert set(grads) == set(grads64)
    # Some gradients are zero analytically (a bias right before a train-mode BatchNorm: its
    # gradient is a sum over rows that cancels exactly); both sides then return rounding noise of
    # the size of the summed terms, ~1e-6 of the model's largest gradient. Hence the floor.
    floor = 1e-5 * max(np.abs(g).max() for g in grads64.values())
    for name in grads64:
        check(grads[name], grads32[name], grads64[name], f"grad {name}", rel_grad, floor)
    after = state_dict_from(net)
    ref_params = dict(ref.named_parameters())
    for name, value in ref.state_dict().items():
        if name not in ref_params and name in after:  # BatchNorm running statistics and counters
            assert_close(after[name], value.numpy(), f"buffer {name}", rel_out)
    return out, terms
