"""The net's training state: the seed and the step (its count of train-mode passes) that key the dropout
and drop-path masks, read and restored through Model and the binding."""
import numpy as np
import pytest

import herbs
from herbs import _C
from herbs.cli import DEMO_BACKBONE, DEMO_SELECTS

MODELS = {  # the demo's Swin with drop path, a tiny ResNet; the combiner's dropout 0.1 in both
    "swin": (dict(DEMO_BACKBONE, drop_path_rate=0.1), DEMO_SELECTS),
    "resnet": ({"backbone": "resnet", "img_size": 64, "depths": (1, 1, 1, 1), "width": 8}, (100, 24, 6, 2)),
}


def make(kind):
    backbone, selects = MODELS[kind]
    return herbs.Model(backbone, num_classes=3, num_selects=selects, fpn_size=32, dropout=0.1, seed=0)


def test_the_step_keys_the_masks():
    """train-mode passes count, eval ones do not; a net set to a step draws that step's masks."""
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    y = np.array([0, 2])
    a = make("swin")
    assert a.training_state() == {"seed": 0, "step": 0}
    first, second = a.train_step(x, y), a.train_step(x, y)  # same parameters (no optimiser step), new masks
    a.forward(x)
    a.forward(x, train=True)
    assert a.training_state() == {"seed": 0, "step": 3}
    assert first["total"] != second["total"]
    b = make("swin")
    b.load_training_state({"seed": 0, "step": 1})
    assert b.train_step(x, y) == second
    b.load_training_state({"seed": 5, "step": 1})
    assert b.train_step(x, y) != second and b.training_state() == {"seed": 5, "step": 2}
    a.load_training_state({"seed": np.uint64(2 ** 64 - 1), "step": np.int64(7)})
    assert a.training_state() == {"seed": 2 ** 64 - 1, "step": 7}


@pytest.mark.parametrize("state, message", [
    ({"seed": 0}, "keys 'seed' and 'step'"),
    ({"seed": 0, "step": 1, "epoch": 2}, "keys 'seed' and 'step'"),
    ([0, 1], "a mapping"),
    ({"seed": 0, "step": -1}, "'step' must be an integer"),
    ({"seed": 2 ** 64, "step": 0}, "'seed' must be an integer"),
    ({"seed": 0, "step": 1.0}, "'step' must be an integer"),
    ({"seed": True, "step": 0}, "'seed' must be an integer"),
])
def test_bad_training_states_are_refused(state, message):
    model = make("resnet")
    with pytest.raises(ValueError, match=message):
        model.load_training_state(state)
    assert model.training_state() == {"seed": 0, "step": 0}


def test_the_binding_checks_step_and_seed():
    net = _C.Net("herbs", {"backbone": "resnet", "img_size": 64, "depths": (1, 1, 1, 1), "width": 8,
                           "num_classes": 3, "num_selects": (100, 24, 6, 2)}, 3)
    assert (net.seed, net.step) == (3, 0)
    net.step = 2 ** 64 - 1
    assert (net.seed, net.step) == (3, 2 ** 64 - 1)
    for bad in (-1, 2 ** 64, 1.5, "1", None, False):
        with pytest.raises(ValueError, match="step must be an integer in"):
            net.step = bad
    with pytest.raises(TypeError, match="cannot delete"):
        del net.seed
    blank = _C.Net.__new__(_C.Net)
    with pytest.raises(RuntimeError, match="not initialised"):
        blank.step
    with pytest.raises(RuntimeError, match="not initialised"):
        blank.seed = 1
