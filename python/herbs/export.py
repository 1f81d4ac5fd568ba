"""ONNX export of a :class:`herbs.Model`'s inference graph, for ONNX Runtime, OpenVINO, TensorRT.

The graph is written node by node from the model's settings and state dict with the ``onnx``
package (``pip install herbs[onnx]``); PyTorch is not involved. It computes what
``model.forward(x, train=False)`` and ``model.predict(x)`` compute (SPEC.md §2-§3, §6), in eval
mode: BatchNorm with running statistics, no dropout or drop path.

- Input ``images``: float32 ``[batch, 3, img_size, img_size]``, normalised as for the model
  (ImageNet mean and std, :func:`herbs.transforms.eval_transform`); the batch is dynamic.
- Outputs: ``outputs="predict"`` (the default) gives ``probabilities`` ``[batch, classes]``, the
  scores of :meth:`herbs.Model.predict` (the mean softmax of the image-level heads), which is
  what a deployment needs; ``outputs="all"`` gives also the outputs of :meth:`herbs.Model.forward`
  by their names (``FPN1_layer{i}``, ``layer{i}``, ``select_layer{i}``, ``drop_layer{i}``,
  ``comb_outs``: 17 with every switch on).
- The selector's stable descending sort is ONNX ``TopK`` over the whole token axis (largest,
  sorted), which the ONNX specification orders with ties to the lower index: the stable sort.
  ``GatherND`` with ``batch_dims=1`` takes the kept and dropped tokens.
  Tokens whose scores differ only by float32 rounding (common on random weights) may rank
  differently in another runtime than in herbs, which moves rows of ``select_layer*`` /
  ``drop_layer*`` and changes ``comb_outs`` a little; the probabilities move far less (1e-6 on a
  random ResNet-50 whose ``comb_outs`` moved 8e-4).
- Metadata (``metadata_props``): ``class_names`` (JSON, when given), ``img_size``, ``mean``,
  ``std``, ``herbs_version``.

Backbones: Swin and ResNet (the kinds of :data:`herbs.backbones.SPECS` named ``"swin"`` and
``"resnet"``), every switch setting of the head. Opset 17.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from herbs.evaluate import IMAGE_HEADS, TOKEN_HEADS
from herbs.files import atomic_write
from herbs.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["export_onnx", "build_onnx", "OPSET"]

OPSET = 17
_EPS = 1e-5  # LayerNorm and BatchNorm (SPEC.md §2, PyTorch's default)
TAPS = 4


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'herbs[onnx]' (or pip install onnx)"
                          ) from None
    return onnx


class _Graph:
    """Nodes and initialisers of one ONNX graph, named as they are added."""

    def __init__(self, onnx, params: Mapping[str, np.ndarray]):
        self.onnx, self.params = onnx, params
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0
        self.cache: Dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        """An initialiser holding `value`."""
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(value, dtype=dtype, order="C"), name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        """An int64 initialiser (shapes, axes, indices); one per distinct value."""
        key = ("ints", tuple(int(v) for v in values))
        if key not in self.cache:
            self.cache[key] = self.const(np.array(key[1], np.int64), "ints", np.int64)
        return self.cache[key]

    def param(self, key: str, form=None, tag: str = "") -> str:
        """The state dict's tensor `key` as an initialiser, through `form` (a function of the array)
        if given; each (key, tag) is stored once."""
        if key not in self.params:
            raise ValueError(f"the state dict has no tensor {key!r}, which the export of this model needs")
        cache = ("param", key, tag)
        if cache not in self.cache:
            value = np.asarray(self.params[key], np.float32)
            self.cache[cache] = self.const(form(value) if form else value, key.replace(".", "_") + tag)
        return self.cache[cache]

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    # layers ---------------------------------------------------------------------------------

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.ints(shape))

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", x, perm=list(perm))

    def linear(self, x: str, prefix: str, bias: bool = True) -> str:
        """x @ weight.T (+ bias) on the last axis; weight [out, in] (a Conv1d's [out, in, 1] too)."""
        w = self.param(prefix + ".weight", lambda a: a.reshape(a.shape[0], -1).T, ".T")
        y = self.op("MatMul", x, w)
        return self.op("Add", y, self.param(prefix + ".bias")) if bias else y

    def conv(self, x: str, prefix: str, stride: int = 1, pad: int = 0, bias: bool = True) -> str:
        """Conv1d or Conv2d with PyTorch's weight [out, in, k...]."""
        w = self.params.get(prefix + ".weight")
        if w is None:
            raise ValueError(f"the state dict has no tensor {prefix + '.weight'!r}, which the export needs")
        spatial = np.asarray(w).ndim - 2
        inputs = [x, self.param(prefix + ".weight")] + ([self.param(prefix + ".bias")] if bias else [])
        return self.op("Conv", *inputs, strides=[stride] * spatial, pads=[pad] * (2 * spatial))

    def layernorm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", x, self.param(prefix + ".weight"), self.param(prefix + ".bias"),
                       axis=-1, epsilon=_EPS)

    def batchnorm(self, x: str, prefix: str) -> str:
        """Eval-mode BatchNorm over axis 1 (channels) of [B, C, ...]."""
        return self.op("BatchNormalization", x, *(self.param(f"{prefix}.{n}") for n in
                                                   ("weight", "bias", "running_mean", "running_var")), epsilon=_EPS)

    def gelu(self, x: str) -> str:
        """Exact GELU, 0.5·x·(1 + erf(x/√2))."""
        erf = self.op("Erf", self.op("Mul", x, self.const(np.float32(1 / np.sqrt(2)), "rsqrt2")))
        return self.op("Mul", self.op("Mul", x, self.const(np.float32(0.5), "half")),
                       self.op("Add", erf, self.const(np.float32(1.0), "one")))

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", x, self.ints([start]), self.ints([end]), self.ints([axis]))

    def roll(self, x: str, shift: int, size: int, axes: Sequence[int]) -> str:
        """torch.roll(x, shift) along each of `axes` (each of length `size`)."""
        cut = (-shift) % size
        for axis in axes:
            x = self.op("Concat", self.slice(x, cut, size, axis), self.slice(x, 0, cut, axis), axis=axis)
        return x

    def tokens(self, maps: str, channels: int, tokens: int) -> str:
        """[B, C, H, W] maps -> [B, H·W, C] tokens."""
        return self.transpose(self.reshape(maps, [-1, channels, tokens]), [0, 2, 1])


# ---------------------------------------------------------------------------------------------
# backbones: images -> four taps, with their geometry

class _Taps:
    """The backbone's outputs: per tap a name, its tokens, channels, grid side and whether the
    name holds [B, C, H, W] maps (CNN) rather than [B, S, C] tokens."""

    def __init__(self):
        self.names: List[str] = []
        self.tokens: List[int] = []
        self.channels: List[int] = []
        self.side: List[int] = []
        self.maps = False

    def add(self, name: str, side: int, channels: int) -> None:
        self.names.append(name)
        self.side.append(side)
        self.tokens.append(side * side)
        self.channels.append(channels)


def _count(params: Mapping, prefix: str) -> int:
    """How many consecutive indices i have keys starting with f"{prefix}{i}."."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in params):
        n += 1
    return n


def _swin_window_attention(g: _Graph, x: str, p: str, side: int, dim: int, heads: int, window: int,
                           shift: int) -> str:
    """The attention branch of a Swin block on LN1(x) [B, L, C] -> [B, L, C] (SPEC.md §2)."""
    n, per_row = window * window, side // window
    windows, d = per_row * per_row, dim // heads
    y = g.reshape(x, [-1, side, side, dim])
    if shift:
        y = g.roll(y, -shift, side, (1, 2))
    y = g.reshape(g.transpose(g.reshape(y, [-1, per_row, window, per_row, window, dim]), [0, 1, 3, 2, 4, 5]),
                  [-1, n, dim])  # windows [B·nW, N, C], row-major
    qkv = g.transpose(g.reshape(g.linear(y, p + ".qkv", bias=p + ".qkv.bias" in g.params), [-1, n, 3, heads, d]),
                      [2, 0, 3, 1, 4])  # [3, B·nW, h, N, d]
    q, k, v = (g.op("Gather", qkv, g.const(np.int64(i), "index", np.int64), axis=0) for i in range(3))
    q = g.op("Mul", q, g.const(np.float32(d ** -0.5), "scale"))
    logits = g.op("MatMul", q, g.transpose(k, [0, 1, 3, 2]))  # [B·nW, h, N, N]
    added = g.param(p + ".relative_position_bias_table", lambda t: _bias_and_mask(t, side, window, shift), ".bias_mask")
    logits = g.reshape(g.op("Add", g.reshape(logits, [-1, windows, heads, n, n]), added), [-1, heads, n, n])
    out = g.op("MatMul", g.op("Softmax", logits, axis=-1), v)  # [B·nW, h, N, d]
    out = g.linear(g.reshape(g.transpose(out, [0, 2, 1, 3]), [-1, n, dim]), p + ".proj")
    out = g.reshape(g.transpose(g.reshape(out, [-1, per_row, per_row, window, window, dim]), [0, 1, 3, 2, 4, 5]),
                    [-1, side, side, dim])
    if shift:
        out = g.roll(out, shift, side, (1, 2))
    return g.reshape(out, [-1, side * side, dim])


def _relative_index(window: int) -> np.ndarray:
    """[N, N]: (dy + w - 1)·(2w - 1) + (dx + w - 1) for query minus key (SPEC.md §2)."""
    ys, xs = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    coords = np.stack([ys.ravel(), xs.ravel()])
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + window - 1) * (2 * window - 1) + rel[1] + window - 1


def _shift_mask(side: int, window: int, shift: int) -> np.ndarray:
    """[nW, N, N]: -100 between tokens of different pre-roll regions, 0 elsewhere."""
    labels = np.zeros((side, side))
    regions = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for r, rows in enumerate(regions):
        for c, cols in enumerate(regions):
            labels[rows, cols] = 3 * r + c
    per_row = side // window
    w = labels.reshape(per_row, window, per_row, window).transpose(0, 2, 1, 3).reshape(-1, window * window)
    return np.where(w[:, None, :] != w[:, :, None], -100.0, 0.0)


def _bias_and_mask(table: np.ndarray, side: int, window: int, shift: int) -> np.ndarray:
    """[nW, heads, N, N]: the relative-position bias of each head plus the shifted-window mask."""
    n, heads = window * window, table.shape[1]
    bias = table[_relative_index(window).ravel()].reshape(n, n, heads).transpose(2, 0, 1)  # [h, N, N]
    windows = (side // window) ** 2
    mask = _shift_mask(side, window, shift) if shift else np.zeros((windows, n, n))
    return (bias[None].astype(np.float64) + mask[:, None]).astype(np.float32)


def _swin(g: _Graph, images: str, img_size: int) -> _Taps:
    """Swin (SPEC.md §2), its geometry read from the state dict: patch size and width from the patch
    embedding, depths from the block keys, heads and windows from the bias tables."""
    prm = g.params
    embed = np.asarray(prm["backbone.patch_embed.proj.weight"])
    dim, patch = embed.shape[0], embed.shape[2]
    side = img_size // patch
    x = g.conv(images, "backbone.patch_embed.proj", stride=patch)
    x = g.layernorm(g.tokens(x, dim, side * side), "backbone.patch_embed.norm")
    taps = _Taps()
    for s in range(TAPS):
        for b in range(_count(prm, f"backbone.layers.{s}.blocks.")):
            p = f"backbone.layers.{s}.blocks.{b}"
            table = np.asarray(prm[p + ".attn.relative_position_bias_table"])
            heads, window = table.shape[1], (int(round(np.sqrt(table.shape[0]))) + 1) // 2
            # a stage whose map fits in one window has a window of the map and no shift
            shift = window // 2 if b % 2 == 1 and side > window else 0
            x = g.op("Add", x, _swin_window_attention(g, g.layernorm(x, p + ".norm1"), p + ".attn", side, dim, heads,
                                                      window, shift))
            h = g.linear(g.gelu(g.linear(g.layernorm(x, p + ".norm2"), p + ".mlp.fc1")), p + ".mlp.fc2")
            x = g.op("Add", x, h)
        if s < TAPS - 1:  # patch merging: 2x2 neighbours (0,0), (1,0), (0,1), (1,1), row offset first
            p = f"backbone.layers.{s}.downsample"
            half = side // 2
            x = g.reshape(g.transpose(g.reshape(x, [-1, half, 2, half, 2, dim]), [0, 1, 3, 4, 2, 5]),
                          [-1, half * half, 4 * dim])
            x = g.linear(g.layernorm(x, p + ".norm"), p + ".reduction", bias=False)
            side, dim = half, 2 * dim
        taps.add(x, side, dim)
    return taps


def _resnet(g: _Graph, images: str, img_size: int) -> _Taps:
    """ResNet v1.5 bottlenecks (SPEC.md §2), eval-mode BatchNorm; taps are NCHW maps."""
    prm = g.params
    relu = lambda t: g.op("Relu", t)  # noqa: E731
    x = relu(g.batchnorm(g.conv(images, "backbone.conv1", stride=2, pad=3, bias=False), "backbone.bn1"))
    x = g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    side = (img_size + 2 * 3 - 7) // 2 + 1
    side = (side + 2 - 3) // 2 + 1
    taps = _Taps()
    taps.maps = True
    for s in range(1, TAPS + 1):
        for b in range(_count(prm, f"backbone.layer{s}.")):
            p = f"backbone.layer{s}.{b}"
            stride = 2 if s > 1 and b == 0 else 1
            y = relu(g.batchnorm(g.conv(x, p + ".conv1", bias=False), p + ".bn1"))
            y = relu(g.batchnorm(g.conv(y, p + ".conv2", stride=stride, pad=1, bias=False), p + ".bn2"))
            y = g.batchnorm(g.conv(y, p + ".conv3", bias=False), p + ".bn3")
            identity = x
            if p + ".downsample.0.weight" in prm:
                identity = g.batchnorm(g.conv(x, p + ".downsample.0", stride=stride, bias=False), p + ".downsample.1")
            x = relu(g.op("Add", y, identity))
            side = (side - 1) // stride + 1
        taps.add(x, side, int(np.asarray(prm[f"backbone.layer{s}.{b}.conv3.weight"]).shape[0]))
    return taps


BACKBONE_GRAPHS = {"swin": _swin, "resnet": _resnet}


# ---------------------------------------------------------------------------------------------
# the head (SPEC.md §3)

def _classifier(g: _Graph, feats: str, prefix: str) -> str:
    """Per token: Conv1d – BatchNorm1d – ReLU – Conv1d, on [B, S, F] -> logits [B, S, classes]."""
    x = g.transpose(feats, [0, 2, 1])
    x = g.op("Relu", g.batchnorm(g.conv(x, prefix + ".0"), prefix + ".1"))
    return g.transpose(g.conv(x, prefix + ".3"), [0, 2, 1])


def _mlp(g: _Graph, x: str, prefix: str) -> str:
    """Linear – ReLU – Linear on the last axis."""
    return g.linear(g.op("Relu", g.linear(x, prefix + ".0")), prefix + ".2")


def _pyramid_tokens(g: _Graph, taps: _Taps) -> Tuple[List[str], List[str]]:
    """The token pyramid (Swin): top-down and bottom-up features, each [B, S_i, F]."""
    down = [_mlp(g, taps.names[i], f"fpn_down.Proj_layer{i + 1}") for i in range(TAPS)]
    for i in range(TAPS - 1, 0, -1):  # Up_layer{i+1}: Conv1d over the token axis, S_{i+1} -> S_i
        down[i - 1] = g.op("Add", down[i - 1], g.conv(down[i], f"fpn_down.Up_layer{i + 1}"))
    up = [_mlp(g, down[i], f"fpn_up.Proj_layer{i + 1}") for i in range(TAPS)]
    for i in range(TAPS - 1):
        up[i + 1] = g.op("Add", up[i + 1], g.conv(up[i], f"fpn_up.Down_layer{i + 1}"))
    return down, up


def _pyramid_cnn(g: _Graph, taps: _Taps, fpn: int) -> Tuple[List[str], List[str]]:
    """The CNN pyramid (ResNet) on [B, F, H, W] maps: 1x1 conv projections, ×2 bilinear upsampling
    top-down, 2x2 average pooling bottom-up (a level of the same size is added as it is)."""
    side = taps.side
    down = []
    for i in range(TAPS):
        p = f"fpn_down.Proj_layer{i + 1}"
        down.append(g.conv(g.op("Relu", g.conv(taps.names[i], p + ".0")), p + ".2"))
    for i in range(TAPS - 1, 0, -1):
        upper = down[i]
        if side[i - 1] != side[i]:
            _check_doubles(side, i - 1, i)
            upper = g.op("Resize", upper, "", g.const(np.array([1, 1, 2, 2], np.float32), "scales"), mode="linear",
                         coordinate_transformation_mode="half_pixel")
        down[i - 1] = g.op("Add", down[i - 1], upper)
    up = []
    for i in range(TAPS):  # Linear projections on channels: a 1x1 convolution of the maps
        p = f"fpn_up.Proj_layer{i + 1}"
        conv1x1 = lambda a: a[:, :, None, None]  # noqa: E731
        x = g.op("Conv", down[i], g.param(p + ".0.weight", conv1x1, ".1x1"), g.param(p + ".0.bias"))
        up.append(g.op("Conv", g.op("Relu", x), g.param(p + ".2.weight", conv1x1, ".1x1"), g.param(p + ".2.bias")))
    for i in range(TAPS - 1):
        lower = up[i]
        if side[i] != side[i + 1]:
            _check_doubles(side, i, i + 1)
            lower = g.op("AveragePool", lower, kernel_shape=[2, 2], strides=[2, 2])
        up[i + 1] = g.op("Add", up[i + 1], lower)
    as_tokens = lambda maps: [g.tokens(m, fpn, s * s) for m, s in zip(maps, side)]  # noqa: E731
    return as_tokens(down), as_tokens(up)


def _check_doubles(side: Sequence[int], lower: int, upper: int) -> None:
    if side[lower] != 2 * side[upper]:
        raise ValueError(f"the CNN pyramid needs layer{lower + 1}'s grid ({side[lower]}) to be layer{upper + 1}'s "
                         f"({side[upper]}) or twice it")


def _select(g: _Graph, feats: Optional[str], logits: str, tokens: int, keep: int):
    """The selector for one tap (SPEC.md §3.5): (kept features or None, select logits, drop logits)."""
    top = g.op("ArgMax", g.op("ReduceMean", logits, axes=[1], keepdims=0), axis=1, keepdims=1)  # [B, 1]
    probs = g.transpose(g.op("Softmax", logits, axis=-1), [0, 2, 1])  # [B, classes, S]
    scores = g.op("GatherND", probs, top, batch_dims=1)  # [B, S]: each token's probability of the top class
    _, order = g.op("TopK", scores, g.ints([tokens]), axis=1, largest=1, sorted=1, outputs=2)  # stable: ties to lower
    order = g.op("Unsqueeze", order, g.ints([-1]))  # [B, S, 1]
    kept, dropped = g.slice(order, 0, keep, 1), g.slice(order, keep, tokens, 1)
    take = lambda x, idx: g.op("GatherND", x, idx, batch_dims=1)  # noqa: E731
    return (take(feats, kept) if feats is not None else None), take(logits, kept), take(logits, dropped)


def _combiner(g: _Graph, kept: List[str]) -> str:
    """The GCN combiner (SPEC.md §3.6) on the kept features -> comb_outs [B, classes]."""
    hs = g.transpose(g.op("Concat", *kept, axis=1), [0, 2, 1])  # [B, F, ΣK]
    hs = g.linear(hs, "combiner.param_pool0")  # [B, F, J]
    q = g.op("ReduceMean", g.conv(hs, "combiner.conv_q1"), axes=[1], keepdims=0)  # [B, J]
    k = g.op("ReduceMean", g.conv(hs, "combiner.conv_k1"), axes=[1], keepdims=0)
    diff = g.op("Sub", g.op("Unsqueeze", q, g.ints([2])), g.op("Unsqueeze", k, g.ints([1])))  # [B, J, J]
    adjacency = g.op("Add", g.param("combiner.adj1"), g.op("Mul", g.op("Tanh", diff), g.param("combiner.alpha1")))
    hs = g.op("MatMul", g.conv(hs, "combiner.conv1"), adjacency)
    hs = g.linear(g.batchnorm(hs, "combiner.batch_norm1"), "combiner.param_pool1")  # [B, F, 1]
    return g.linear(g.op("Flatten", hs, axis=1), "combiner.classifier")


def _default_selects(tokens: Sequence[int]) -> List[int]:
    """floor(S_i · (1, 2, 4, 2) / 9), at least 1 (the engine's default)."""
    return [max(1, s * n // 9) for s, n in zip(tokens, (1, 2, 4, 2))]


def _head(g: _Graph, taps: _Taps, config: Mapping, selects: Sequence[int]) -> Dict[str, str]:
    """The outputs of forward by name; `selects`: tokens kept per tap."""
    out: Dict[str, str] = {}
    use_fpn, use_selection = bool(config.get("use_fpn", 1)), bool(config.get("use_selection", 1))
    use_combiner = bool(config.get("use_combiner", 1))
    tokens = [taps.names[i] if not taps.maps else g.tokens(taps.names[i], taps.channels[i], taps.tokens[i])
              for i in range(TAPS)]
    feats = tokens
    if use_fpn:
        fpn = int(np.asarray(g.params["fpn_down.Proj_layer4.2.weight"]).shape[0])
        pyramid = config.get("fpn_type") or ("cnn" if taps.maps else "tokens")
        if pyramid == "cnn":
            if not taps.maps:
                raise ValueError("fpn_type 'cnn' needs a CNN backbone's maps")
            down, up = _pyramid_cnn(g, taps, fpn)
        else:
            if taps.maps:
                raise ValueError("the token pyramid of a CNN backbone (fpn_type 'tokens') is not exported")
            down, up = _pyramid_tokens(g, taps)
        for i in range(TAPS):
            out[f"FPN1_layer{i + 1}"] = _classifier(g, down[i], f"fpn_classifier_down_layer{i + 1}")
            out[f"layer{i + 1}"] = _classifier(g, up[i], f"fpn_classifier_up_layer{i + 1}")
        feats = up
    elif use_selection:
        for i in range(TAPS):
            out[f"layer{i + 1}"] = g.linear(tokens[i], f"selector.classifier_l_layer{i + 1}")
    if use_selection:
        kept = []
        for i in range(TAPS):
            k, sel, drop = _select(g, feats[i] if use_fpn else None, out[f"layer{i + 1}"], taps.tokens[i],
                                   int(selects[i]))
            out[f"select_layer{i + 1}"], out[f"drop_layer{i + 1}"] = sel, drop
            kept.append(k)
        if use_combiner:
            out["comb_outs"] = _combiner(g, kept)
    if not (use_fpn or use_selection):
        out["ori_out"] = g.linear(g.op("ReduceMean", tokens[-1], axes=[1], keepdims=0), "classifier")
    return out


def _probabilities(g: _Graph, out: Mapping[str, str]) -> str:
    """predict's scores: the mean of the softmax of each head's image-level score (SPEC.md §6)."""
    scores = [g.op("ReduceMean", out[h], axes=[1], keepdims=0) for h in TOKEN_HEADS if h in out]
    scores += [out[h] for h in IMAGE_HEADS if h in out]
    total = g.op("Sum", *(g.op("Softmax", s, axis=-1) for s in scores))
    return g.op("Div", total, g.const(np.float32(len(scores)), "heads"))


# ---------------------------------------------------------------------------------------------

def _output_shape(name: str, taps: _Taps, selects: Sequence[int], classes: int) -> list:
    """The shape of an output, "batch" for the dynamic axis."""
    if name[-1].isdigit():
        i = int(name[-1]) - 1
        if name.startswith("select_"):
            return ["batch", selects[i], classes]
        if name.startswith("drop_"):
            return ["batch", taps.tokens[i] - selects[i], classes]
        return ["batch", taps.tokens[i], classes]
    return ["batch", classes]


def build_onnx(model, outputs: str = "predict", class_names: Optional[Sequence[str]] = None):
    """The ``onnx.ModelProto`` of `model`'s inference graph (see the module docstring)."""
    onnx = _onnx()
    if outputs not in ("predict", "all"):
        raise ValueError(f"outputs must be 'predict' (the probabilities) or 'all' (also forward's outputs), "
                         f"got {outputs!r}")
    kind = model.backbone_kind
    if kind not in BACKBONE_GRAPHS:
        raise ValueError(f"ONNX export supports the backbones {sorted(BACKBONE_GRAPHS)}, not {kind!r}")
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes")
    g = _Graph(onnx, model.state_dict())
    channels, size = model.image_shape[0], model.img_size
    taps = BACKBONE_GRAPHS[kind](g, "images", size)
    selects = model.config.get("num_selects") or _default_selects(taps.tokens)
    out = _head(g, taps, model.config, selects)
    probabilities = _probabilities(g, out)
    results = {"probabilities": probabilities, **(out if outputs == "all" else {})}
    helper, TensorProto = onnx.helper, onnx.TensorProto
    for name, value in results.items():  # graph outputs under their public names
        g.nodes.append(helper.make_node("Identity", [value], [name]))
    graph = helper.make_graph(
        g.nodes, "herbs", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, _output_shape(name, taps, selects, model.num_classes))
         for name in results], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="herbs")
    proto.ir_version = 8  # opset 17's; runtimes from ONNX Runtime 1.14 on read it
    import herbs
    meta = {"img_size": str(size), "mean": json.dumps(IMAGENET_MEAN), "std": json.dumps(IMAGENET_STD),
            "herbs_version": herbs.__version__, "outputs": outputs}
    if class_names is not None:
        meta["class_names"] = json.dumps([str(c) for c in class_names])
    helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path: str, outputs: str = "predict", class_names: Optional[Sequence[str]] = None) -> str:
    """Writes `model`'s inference graph to `path` (atomically); returns the path. See the module
    docstring for inputs, outputs and metadata."""
    proto = build_onnx(model, outputs, class_names)
    data = proto.SerializeToString()
    with atomic_write(os.fspath(path)) as f:
        f.write(data)
    return os.fspath(path)
