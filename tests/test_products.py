"""Weight handles (herbs_c/nn/product.h): every write path to the parameters marks them written, and
the next forward sees the write — no packed weight made before it (a k×k conv's compute layout, the
GEMM packs of fp32 and bf16) is used again. Each case forwards first (so packs exist), writes,
forwards again, and compares with a fresh model that never packed anything, loaded with the written
weights; in each precision. And the packs are kept across calls exactly while no view of the
parameters can have been written (py/net.c's note_param_writes)."""
import numpy as np
import pytest

import herbs
from herbs.optim import SGD
from herbs.weights import save_file

RESNET = dict(img_size=64, depths=(1, 1, 1, 1), width=8)  # 3x3 and 7x7 convs: packed forms
SWIN = dict(img_size=64, patch_size=2, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4)
CLASSES = 3


def make(kind, seed, precision="fp32"):
    spec = RESNET if kind == "resnet" else SWIN
    keep = (100, 24, 6, 2) if kind == "resnet" else (100, 24, 6, 4)
    return herbs.Model({"backbone": kind, **spec}, num_classes=CLASSES, num_selects=keep, dropout=0.0, seed=seed,
                       precision=precision, **({} if kind == "resnet" else {"drop_path_rate": 0.0}))


def images(model):
    return np.random.default_rng(0).standard_normal((2, *model.image_shape)).astype(np.float32)


def fresh_forward(kind, model, x):
    """The model's outputs from a model that has never forwarded, loaded with model's weights."""
    other = make(kind, seed=99, precision=model.precision)
    other.load_state_dict(model.state_dict())
    return other.forward(x)


def assert_same_outputs(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # same weights, same kernels: same bits


def write_optimiser_step(model, x):
    model.train_step(x, np.array([0, 1]))
    SGD(model.flat_parameters(), model.flat_gradients(), lr=0.5).step()


def write_load_state_dict(model, x):
    sd = make("resnet" if model.backbone_kind == "resnet" else "swin", seed=7).state_dict()
    model.load_state_dict(sd)


def write_parameter_view(model, x):
    for name, view in model.named_parameters():
        if view.ndim == 4:  # every conv weight (the packed ones among them)
            view *= -1.5


def write_held_view(model, x):
    """a view kept across the next forward (returned: the test holds it), written before it"""
    view = dict(model.named_parameters())["fpn_down.Proj_layer1.0.weight"]
    view *= -2.0
    return view


def write_flat_parameters(model, x):
    flat = model.flat_parameters()
    flat += np.random.default_rng(1).standard_normal(flat.shape).astype(np.float32) * 0.05


def write_load_pretrained(model, x, tmp_path):
    donor = make(model.backbone_kind, seed=11).state_dict()
    path = str(tmp_path / "backbone.npz")
    save_file({k: v for k, v in donor.items() if k.startswith("backbone.")}, path)
    model.load_pretrained(path)


WRITES = [write_optimiser_step, write_load_state_dict, write_parameter_view, write_held_view, write_flat_parameters]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["resnet", "swin"])
@pytest.mark.parametrize("write", WRITES + [write_load_pretrained], ids=lambda f: getattr(f, "__name__", f))
def test_next_forward_sees_every_write(kind, write, precision, tmp_path):
    model = make(kind, seed=3, precision=precision)
    x = images(model)
    model.forward(x)
    before = model.forward(x)  # from packs made by the first
    held = write(model, x, tmp_path) if write is write_load_pretrained else write(model, x)
    after = model.forward(x)
    del held
    assert not np.array_equal(before["comb_outs"], after["comb_outs"]), "the write changed nothing"
    assert_same_outputs(after, fresh_forward(kind, model, x))


def test_packs_are_kept_while_no_view_can_have_been_written():
    """With no view of the parameters held or handed out since, calls reuse the packs (the version
    stays); a view handed out since the last call, or alive now, makes the next call count the
    parameters as written; each write path marks them written by itself."""
    model = make("resnet", seed=3, precision="bf16")
    net = model._net
    x = images(model)
    model.forward(x)
    version = net.params_version
    model.forward(x)
    model.predict(x)
    model.train_step(x, np.array([0, 1]))
    assert net.params_version == version, "nothing was written: the packs serve the next calls"
    views = model.named_parameters()  # handed out, then dropped before the call
    del views
    model.forward(x)
    assert net.params_version == version + 1
    model.forward(x)
    assert net.params_version == version + 1, "dropped views cannot write: packs kept again"
    flat = model.flat_parameters()[10:20]  # a view of the block's array, held
    for _ in range(2):
        version = net.params_version
        model.forward(x)
        assert net.params_version == version + 1, "a live view may have been written"
    del flat
    model.forward(x)
    version = net.params_version
    model.forward(x)
    assert net.params_version == version
    for step in (lambda: SGD(model.flat_parameters(), model.flat_gradients(), lr=0.1).step(),
                 lambda: SGD(model.flat_parameters()[:], model.flat_gradients(), lr=0.1).step(),  # a view of the view
                 lambda: model.load_state_dict(model.state_dict())):
        version = net.params_version
        step()
        assert net.params_version > version
    version = net.params_version
    SGD(model.flat_parameters().copy(), model.flat_gradients(), lr=0.1).step()  # not the net's memory
    assert net.params_version == version
