"""ONNX export (herbs.export, Model.export_onnx, herbs export): ONNX Runtime runs the exported graph
and its outputs are compared with herbs' own forward and predict on small Swin and ResNet configs,
every parameter and BatchNorm statistic randomised so that no path is a near-identity.

Tolerance: max |ONNX Runtime - herbs| <= 1e-5 x max |herbs| for every output (measured on Zen 4:
at most 1.3e-6; both sides compute in float32, in different orders). The selector's outputs match
only if both sides rank the tokens alike, so they also check the exported TopK sort."""
import json
import sys

import numpy as np
import pytest

import herbs
from herbs import cli, weights

onnx = pytest.importorskip("onnx", reason="the ONNX export tests need the 'onnx' package")
ort = pytest.importorskip("onnxruntime", reason="the ONNX export tests need 'onnxruntime'")

RTOL = 1e-5
SWIN = {"backbone": "swin", "img_size": 64, "patch_size": 2, "embed_dim": 16, "depths": (2, 1, 2, 1),
        "num_heads": (1, 2, 2, 4), "window_size": 8}  # maps 32, 16 (shifted windows), 8 (one window), 4 (a window of 4)
RESNET = {"backbone": "resnet", "img_size": 64, "depths": (1, 2, 1, 1), "width": 8}
SELECTS = {"swin": (64, 32, 8, 4), "resnet": (40, 16, 6, 2)}


def randomised(model, seed=0):
    """The model with every tensor moved away from its initialisation."""
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        else:
            sd[key] = (value + rng.normal(0, 0.05, value.shape)).astype(np.float32)
    sd["combiner.alpha1"] = np.array([0.7], np.float32) if "combiner.alpha1" in sd else None
    model.load_state_dict({k: v for k, v in sd.items() if v is not None})
    return model


def session(model, path, outputs="all"):
    model.export_onnx(str(path), outputs=outputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_matches(model, sess, batch, seed=1):
    x = np.random.default_rng(seed).standard_normal((batch, 3, model.img_size, model.img_size)).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"images": x})))
    want = model.forward(x, train=False)
    want["probabilities"] = model.predict(x)
    assert set(got) == (set(want) if len(got) > 1 else {"probabilities"})  # outputs "all" or "predict"
    for name in names:
        assert got[name].shape == want[name].shape, name
        scale = np.abs(want[name]).max()
        err = np.abs(got[name].astype(np.float64) - want[name]).max()
        assert err <= RTOL * scale, f"{name}: max error {err:.3g} for scale {scale:.3g}"


@pytest.mark.parametrize("kind", ["swin", "resnet"])
def test_every_output_matches_forward_at_any_batch(kind, tmp_path):
    model = randomised(herbs.Model(SWIN if kind == "swin" else RESNET, num_classes=7, num_selects=SELECTS[kind],
                                   seed=3))
    sess = session(model, tmp_path / "m.onnx")
    assert len(sess.get_outputs()) == 18  # the 17 outputs and the probabilities
    assert sess.get_inputs()[0].shape == ["batch", 3, 64, 64]
    for batch in (3, 1):  # one file, any batch
        assert_matches(model, sess, batch, seed=batch)


@pytest.mark.parametrize("switches", [dict(use_combiner=False), dict(use_fpn=False, use_combiner=False),
                                      dict(use_fpn=False, use_selection=False, use_combiner=False)])
def test_ablations_match_forward(switches, tmp_path):
    model = randomised(herbs.Model(SWIN, num_classes=5, num_selects=SELECTS["swin"], seed=4, **switches))
    assert_matches(model, session(model, tmp_path / "m.onnx"), 2)


def test_default_is_predict_with_metadata(tmp_path):
    model = randomised(herbs.Model(RESNET, num_classes=3, num_selects=SELECTS["resnet"]))
    path = model.export_onnx(str(tmp_path / "p.onnx"), class_names=["ant", "bee", "cat"])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == ["ant", "bee", "cat"] and meta["img_size"] == "64"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert_matches(model, sess, 2)


def test_bad_requests_are_refused(tmp_path, monkeypatch):
    model = herbs.Model(SWIN, num_classes=3, num_selects=SELECTS["swin"])
    with pytest.raises(ValueError, match="outputs must be 'predict'"):
        model.export_onnx(str(tmp_path / "x.onnx"), outputs="logits")
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        model.export_onnx(str(tmp_path / "x.onnx"), class_names=["a", "b"])
    patches = herbs.Model({"backbone": "patches"}, num_classes=3, num_selects=(8, 4, 1, 1), use_combiner=False)
    with pytest.raises(ValueError, match="ONNX export supports the backbones \\['resnet', 'swin'\\], not 'patches'"):
        patches.export_onnx(str(tmp_path / "x.onnx"))
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install 'herbs\\[onnx\\]'"):
        model.export_onnx(str(tmp_path / "x.onnx"))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_export_matches_predict(tmp_path, capsys):
    model = randomised(herbs.Model(SWIN, num_classes=3, num_selects=SELECTS["swin"]))
    checkpoint = tmp_path / "best.pth"
    weights.save_file({"model": model.state_dict(), "class_names": ["ant", "bee", "cat"],
                       "model_args": {"backbone": SWIN, "num_classes": 3, "num_selects": SELECTS["swin"]}},
                      str(checkpoint), format="torch")
    cli.main(["export", str(checkpoint), str(tmp_path / "m.onnx")])
    assert "output 'probabilities'" in capsys.readouterr().out
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(sess.get_modelmeta().custom_metadata_map["class_names"]) == ["ant", "bee", "cat"]
    assert_matches(model, sess, 2)
