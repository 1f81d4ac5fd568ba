"""ViT weights into herbs without PyTorch at load time: the position-embedding resize against
SciPy's ndimage.zoom(order=1) and the release's own build_vit16 code, then Model.load_pretrained
of timm-like files (torch.save plain and wrapped, safetensors, .npz) made for a smaller image —
every tensor arriving, the position embedding resized as the release resizes it, the classifier
and final norm skipped — and a HERBS release checkpoint; a wrong depth or an embedding that is no
grid refused by name, loading nothing."""
import math

import numpy as np
import pytest
import safetensors.numpy
import torch

import herbs
import reference_vit
from herbs import state
from herbs.backbones import vit

ndimage = pytest.importorskip("scipy.ndimage", reason="the resize is compared with SciPy's (pip install scipy)")

# a file for 32 px (1 + 2x2 tokens, as timm's are for 224 px: 1 + 14x14) into a model at 64 px
# (1 + 4x4 tokens, as the release's at 448: 1 + 28x28)
FILE = dict(img_size=32, patch_size=16, embed_dim=24, depth=5, num_heads=3, mlp_ratio=2.0)
MODEL = dict(FILE, img_size=64)


def release_resize(pos_embed, img_size, patch=16):
    """The release's build_vit16 (models/builder.py), transcribed: cls row kept, grid zoomed."""
    posemb_tok, posemb_grid = pos_embed[:, :1], pos_embed[0, 1:]
    posemb_grid = posemb_grid.detach().numpy()
    gs_old = int(math.sqrt(len(posemb_grid)))
    gs_new = img_size // patch
    posemb_grid = posemb_grid.reshape(gs_old, gs_old, -1)
    zoom = (gs_new / gs_old, gs_new / gs_old, 1)
    posemb_grid = ndimage.zoom(posemb_grid, zoom, order=1)
    posemb_grid = posemb_grid.reshape(1, gs_new * gs_new, -1)
    return torch.cat([posemb_tok, torch.from_numpy(posemb_grid)], dim=1).numpy()


@pytest.mark.parametrize("old,new,channels", [(14, 28, 768), (14, 24, 40), (2, 5, 3), (7, 3, 5), (1, 4, 2), (5, 1, 2),
                                              (14, 14, 8)])
def test_zoom_equals_scipy_to_float32_rounding(old, new, channels):
    grid = np.random.default_rng(old * 100 + new).standard_normal((old, old, channels)).astype(np.float32)
    ours = vit.zoom_bilinear(grid, new)
    theirs = ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape == (new, new, channels)
    np.testing.assert_array_max_ulp(ours, theirs, maxulp=1)


def test_resize_is_the_release_build_vit16():
    pos = torch.randn(1, 1 + 14 * 14, 768) * 0.02
    ours = vit.resize_pos_embed(pos.numpy(), 1 + 28 * 28)
    np.testing.assert_array_max_ulp(ours, release_resize(pos, 448), maxulp=1)
    np.testing.assert_array_equal(ours[0, 0], pos[0, 0].numpy())  # the class token's row kept
    with pytest.raises(ValueError, match=r"a position embedding \[1, 1 \+ n², D\] is needed"):
        vit.resize_pos_embed(np.zeros((1, 12, 4), np.float32), 17)
    with pytest.raises(ValueError, match="to 12 tokens: not 1 \\+ a square"):
        vit.resize_pos_embed(np.zeros((1, 5, 4), np.float32), 12)


def timm_file(seed=0):
    """A timm-like state dict of the FILE-size model: the backbone with its final norm and head."""
    torch.manual_seed(seed)
    model = reference_vit.vit(**FILE)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    sd.update({"norm.weight": np.ones(24, np.float32), "norm.bias": np.zeros(24, np.float32),
               "head.weight": np.zeros((7, 24), np.float32), "head.bias": np.zeros(7, np.float32)})
    return sd


def write(kind, sd, path):
    if kind == "pth":
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    elif kind == "pth-state_dict":  # what the release's load_model_weights reads
        torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}, "epoch": 3}, path)
    elif kind == "safetensors":
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    elif kind == "npz":
        np.savez(path, **sd)


def model(seed=123):
    # 17 tokens per tap: too few for the combiner's 64 selected tokens
    return herbs.Model({"backbone": "vit", **MODEL}, num_classes=5, fpn_size=16, num_selects=(8, 8, 8, 8),
                       use_combiner=False, seed=seed)


def backbone_params(m):
    return {k[len("backbone."):]: v for k, v in m.named_parameters() if k.startswith("backbone.")}


@pytest.mark.parametrize("kind", ["pth", "pth-state_dict", "safetensors", "npz"])
def test_load_pretrained_of_a_smaller_image_resizes_the_position_embedding(kind, tmp_path):
    sd = timm_file()
    path = tmp_path / f"vit.{kind}"
    write(kind, sd, path)
    m = model()
    result = m.load_pretrained(str(path))
    assert result.missing_keys == [] and result.unexpected_keys == []
    got = backbone_params(m)
    assert set(got) == set(sd) - {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    for name, value in got.items():
        if name != "pos_embed":
            np.testing.assert_array_equal(value, sd[name], err_msg=name)
    assert got["pos_embed"].shape == (1, 17, 24)
    np.testing.assert_array_max_ulp(got["pos_embed"], release_resize(torch.from_numpy(sd["pos_embed"]), 64), maxulp=1)


def test_release_checkpoint_loads_as_it_is(tmp_path):
    """A HERBS release checkpoint ({"model": state dict}, backbone.* at the model's size)."""
    source = model()
    ckpt = {"model": {k: torch.from_numpy(v.copy()) for k, v in source.state_dict().items()}, "epoch": 9}
    path = tmp_path / "best.pth"
    torch.save(ckpt, path)
    m = model(seed=9)
    m.load_pretrained(str(path))
    for name, value in backbone_params(m).items():
        np.testing.assert_array_equal(value, backbone_params(source)[name], err_msg=name)
    m.load_state_dict(torch.load(path)["model"])
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(m.predict(x), source.predict(x))


def test_wrong_depth_and_an_embedding_of_no_grid_fail_by_name_and_load_nothing(tmp_path):
    sd = {k: v for k, v in timm_file().items() if not k.startswith("blocks.4.")}  # a depth-4 model's file
    path = tmp_path / "vit.npz"
    np.savez(path, **sd)
    m = model()
    before = m.flat_parameters().copy()
    with pytest.raises(state.StateDictError, match="missing keys: 'blocks.4."):
        m.load_pretrained(str(path))
    sd = timm_file()
    sd["pos_embed"] = np.zeros((1, 6, 24), np.float32)  # 1 + 5 rows: no square grid
    np.savez(path, **sd)
    with pytest.raises(ValueError, match=r"a position embedding \[1, 1 \+ n², D\] is needed to resize, got shape "
                                         r"\(1, 6, 24\)"):
        m.load_pretrained(str(path))
    np.testing.assert_array_equal(m.flat_parameters(), before)
