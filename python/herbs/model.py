"""``herbs.Model``: the HERBS classifier (a backbone, the two-way feature pyramid, the selector,
the GCN combiner and the training objective of SPEC.md §3–§4) on the C engine.

::

    m = herbs.Model("swin_tiny_patch4_window7_224", num_classes=200)
    outs = m.forward(x)                       # the 17 outputs, NumPy arrays
    p = m.predict(x)                          # [B, classes]
    losses = m.train_step(x, y, temperature=64.0)
    m.zero_grad(); sd = m.state_dict(); m.load_state_dict(sd)

Everything runs in C (forward, objective, backward) with the GIL released; this class checks
arguments, builds the engine's config, and moves arrays in and out.
"""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from herbs import _C
from herbs import backbones as _backbones
from herbs import evaluate as _evaluate
from herbs import state as _state
from herbs import weights as _weights
from herbs.backbones import BACKBONES

__all__ = ["Model", "BACKBONES", "NonFiniteImageError"]


class NonFiniteImageError(ValueError):
    """Images holding a NaN or an infinity (as float32), refused by :class:`Model`'s calls: such a
    value would spread through every output and gradient. ``images`` lists the positions in the
    batch of the images that hold one."""

    def __init__(self, message: str, images: List[int]):
        super().__init__(message)
        self.images = images


def _refuse_nonfinite(images: np.ndarray) -> None:
    """Raises NonFiniteImageError when the float32 batch holds NaN or ±inf: one pass in C (0.1-0.25 ms
    for 8 images of 384 px on 2 cores, against seconds for their forward); NumPy only locates them."""
    count = _C.count_nonfinite(images)
    if count:
        bad = ~np.isfinite(images)
        which = np.flatnonzero(bad.reshape(len(images), -1).any(axis=1)).tolist()
        b, c, y, x = (int(i) for i in np.argwhere(bad)[0])
        raise NonFiniteImageError(f"images {which} of the batch hold {count} NaN or infinite value(s) (as float32; the "
                                  f"first, {images[b, c, y, x]}, at [{b}, {c}, {y}, {x}]): images must be finite",
                                  which)


def _num_selects(value) -> Optional[Tuple[int, ...]]:
    """None, 4 integers, or the release's {"layer1": K1, ..., "layer4": K4}."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        try:
            value = [value[f"layer{i}"] for i in range(1, 5)]
        except KeyError as e:
            raise ValueError(f"num_selects as a dict needs keys layer1..layer4, missing {e.args[0]!r}") from None
    values = tuple(value)
    if len(values) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"num_selects must be 4 integers (tokens kept per tap), got {value!r}")
    return tuple(int(v) for v in values)


class Model:
    """HERBS: a backbone, a two-way feature pyramid with per-token classifiers, a selector of
    confident tokens and a GCN combiner (SPEC.md §3), trained with the objective of SPEC.md §4.

    Args:
        backbone: a name of :data:`BACKBONES` (``"swin_tiny_patch4_window7_224"``,
            ``"swin_large_patch4_window12_384"``, ``"resnet50"``, ``"efficientnet_b7"``, ...) or a dict of engine
            settings with ``"backbone"``: a kind of :data:`herbs.backbones.SPECS` (``"swin"``,
            ``"resnet"``) and that backbone's keys
            (e.g. ``{"backbone": "swin", "variant": "tiny", "img_size": 224, "depths": (2, 2, 6, 2)}``).
        num_classes: classes of every classifier.
        img_size: image side in pixels; by default the backbone's (224 or 384 for Swin, as in
            its name; 448 for ResNet-50, ViT-B/16 and EfficientNet-B7, the release's setting).
        fpn_size: channels of the pyramid; by default the backbone variant's (512 for ViT-B/16 and
            EfficientNet-B7, the release's), else the last tap's (768 for Swin-T, 1536 for Swin-L,
            2048 for ResNet-50).
        num_selects: tokens kept per tap (4 integers, or the release's ``{"layer1": ...}``); each
            must be smaller than its tap's tokens. By default the backbone variant's (32 per tap for
            ViT-B/16 and EfficientNet-B7, the release's), else ``floor(S_i · (1, 2, 4, 2) / 9)`` for
            tap sizes S_i, which is the paper's (256, 128, 64, 32) for Swin-L at 384 px. With the
            combiner, their sum must be at least 64 (the graph has sum // 64 nodes).
        use_fpn, use_selection, use_combiner: the release's switches. Without any, the model is
            the backbone, a token mean of the last tap and a linear head (output ``ori_out``).
            The combiner needs the selector and the pyramid.
        drop_path_rate: stochastic depth of Swin (default 0.1), ViT (default 0, the release's) and
            EfficientNet (0.2, scaled by block index as torchvision's); not for ResNet.
        dropout: the combiner's dropout (0.1).
        seed: parameter initialisation and the random streams of dropout and drop path (whose
            state a checkpoint keeps: :meth:`training_state`).
        precision: ``"fp32"`` (default) or ``"bf16"``: how the forward pass's products compute
            (also settable later as :attr:`precision`). bf16 rounds the operands of the linear
            layers, qkv and projections, attention's q·kᵀ and p·v, 1×1 and k×k convolutions and
            the pyramid's and classifiers' products to bfloat16 and accumulates in fp32, as
            PyTorch's CPU autocast does (on CPUs without AVX512-BF16 attention stays fp32);
            LayerNorm, BatchNorm, softmax, GELU, reductions and losses stay fp32. Parameters stay
            fp32 (state dicts are unchanged). train_step's backward runs the same products' input
            and weight gradients (dx = dy·W, dW += dyᵀ·x) in bf16 into fp32 gradients, attention's
            backward in fp32 (``TrainConfig(precision=...)`` sets it for a training run).

    Arrays: images are ``[B, 3, img_size, img_size]``; float32 is used as is, float64 and
    float16 are converted to float32 (a copy), other dtypes are refused; non-contiguous and
    byte-swapped (big-endian) arrays are copied to contiguous native ones. Images holding NaN or
    infinity (after the conversion) are refused with :class:`NonFiniteImageError`. Labels are
    integer class indices ``[B]`` of any integer dtype and byte order.

    One model serves one call at a time: a second thread calling into it while it computes gets a
    RuntimeError (use one Model per thread). Compute releases the GIL.
    """

    def __init__(self, backbone: Union[str, Mapping] = "swin_tiny_patch4_window7_224", num_classes: int = 200,
                 img_size: Optional[int] = None, fpn_size: Optional[int] = None,
                 num_selects: Union[Sequence[int], Mapping[str, int], None] = None, use_fpn: bool = True,
                 use_selection: bool = True, use_combiner: bool = True, drop_path_rate: Optional[float] = None,
                 dropout: float = 0.1, seed: int = 0, precision: str = "fp32"):
        self._spec, settings = _backbones.resolve(backbone)
        self.backbone_kind = self._spec.kind
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if img_size is not None:
            settings["img_size"] = img_size
        # a variant's head settings (the release's for that backbone) are defaults of the arguments
        fpn_size = settings.pop("fpn_size", None) if fpn_size is None else fpn_size
        num_selects = settings.pop("num_selects", None) if num_selects is None else num_selects
        if drop_path_rate is not None:
            if "drop_path_rate" not in self._spec.options:
                takers = [s.title for s in _backbones.SPECS.values() if "drop_path_rate" in s.options]
                takers = ", ".join(takers[:-1]) + " and " + takers[-1] if len(takers) > 1 else takers[0]
                raise ValueError(f"drop_path_rate applies to {takers} backbones only, not {self.backbone_kind!r}")
            settings["drop_path_rate"] = drop_path_rate
        config = dict(settings, num_classes=int(num_classes), fpn_size=fpn_size, num_selects=_num_selects(num_selects),
                      use_fpn=int(bool(use_fpn)), use_selection=int(bool(use_selection)),
                      use_combiner=int(bool(use_combiner)), dropout=dropout)
        self._net = _C.Net("herbs", config, int(seed))
        self._lock = threading.Lock()
        self._table = [(name, kind, tuple(shape), offset, size) for name, kind, shape, offset, size in self._net.tensors()]
        self.backbone = backbone if isinstance(backbone, str) else dict(backbone)
        self.num_classes = int(num_classes)
        self.image_shape = tuple(self._net.image_shape)
        self.img_size = self.image_shape[1]
        self.config = {k: v for k, v in config.items() if v is not None}
        args = dict(backbone=self.backbone, num_classes=self.num_classes, img_size=self.img_size, fpn_size=fpn_size,
                    num_selects=config["num_selects"], use_fpn=bool(use_fpn), use_selection=bool(use_selection),
                    use_combiner=bool(use_combiner), drop_path_rate=drop_path_rate, dropout=dropout)
        #: What rebuilds this model's shape, ``herbs.Model(**m.model_args)`` (not its seed: load the weights);
        #: every checkpoint of herbs.train holds it.
        self.model_args = {k: v for k, v in args.items() if v is not None}
        self.training = False
        self.precision = precision

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: how the forward pass's products compute (see the class
        docstring); a backward computes at the precision of the forward it goes back through, as
        PyTorch's autocast does, so a change between the two takes effect at the next forward.
        Inference packs each weight once for the GEMM of its precision and reuses the
        packs while the parameters are unchanged; any view of them that Python holds (from
        :meth:`named_parameters`, :meth:`flat_parameters`, an optimiser) makes every call repack,
        since writes through it cannot be seen — drop such views for the fastest inference."""
        return self._net.precision

    @precision.setter
    def precision(self, value: str) -> None:
        with self._claim() as net:
            net.precision = value

    # ------------------------------------------------------------------------------------------
    # calls

    @contextlib.contextmanager
    def _claim(self):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("this herbs.Model is busy in another thread: one call at a time per model "
                               "(use one Model per thread)")
        try:
            yield self._net
        finally:
            self._lock.release()

    def _images(self, x) -> np.ndarray:
        """x as a C-contiguous float32 [B, C, H, W] of this model's image size, every value finite."""
        a = np.asarray(x)
        if a.dtype.newbyteorder("=") not in (np.float32, np.float64, np.float16):  # any byte order
            raise TypeError(f"images must be floating point (float32; float64 and float16 are converted), "
                            f"got dtype {a.dtype}")
        want = self.image_shape
        if a.ndim != 4 or a.shape[1:] != want or a.shape[0] < 1:
            raise ValueError(f"images have shape {a.shape}, expected (batch, {want[0]}, {want[1]}, {want[2]}) "
                             f"with batch >= 1 (img_size = {self.img_size})")
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused below
            a = np.ascontiguousarray(a, dtype=np.float32)  # one copy at most: converted, native, C-ordered
        _refuse_nonfinite(a)
        return a

    def _labels(self, y, batch: int) -> np.ndarray:
        a = np.asarray(y)
        if a.dtype.kind == "f":
            return self._soft_targets(a, batch)
        if a.dtype == np.bool_ or a.dtype.kind not in "iu":
            raise TypeError(f"labels must be integer class indices [B] or float class probabilities [B, classes], "
                            f"got dtype {a.dtype}")
        if a.shape != (batch,):
            raise ValueError(f"labels have shape {a.shape}, expected ({batch},): one label per image")
        if a.size and (a.min() < 0 or a.max() >= self.num_classes):
            bad = int(np.flatnonzero((a < 0) | (a >= self.num_classes))[0])
            raise ValueError(f"labels[{bad}] = {int(a[bad])} is not a class index in [0, {self.num_classes})")
        return np.ascontiguousarray(a, np.int64)

    def _soft_targets(self, a: np.ndarray, batch: int) -> np.ndarray:
        """Float targets as C-contiguous float32 [batch, classes], every value finite and >= 0."""
        if a.shape != (batch, self.num_classes):
            raise ValueError(f"targets have shape {a.shape}, expected ({batch}, {self.num_classes}): one distribution "
                             f"over the classes per image")
        a = np.ascontiguousarray(a, np.float32)
        bad = ~(np.isfinite(a) & (a >= 0))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"targets[{row}, {col}] = {a[row, col]}: target probabilities must be finite and >= 0")
        return a

    def train(self, mode: bool = True) -> "Model":
        """Sets the default mode of :meth:`forward` (PyTorch style); returns the model."""
        self.training = bool(mode)
        return self

    def eval(self) -> "Model":
        """Same as ``train(False)``: forward uses BatchNorm running statistics and no dropout."""
        return self.train(False)

    def forward(self, x, train: Optional[bool] = None, return_ranks: bool = False,
                image_level: bool = False) -> Dict[str, np.ndarray]:
        """The model's outputs for images x ``[B, 3, H, W]``, by the release's names: token logits
        ``FPN1_layer{1..4}`` (top-down) and ``layer{1..4}`` (bottom-up) ``[B, S_i, classes]``,
        ``select_layer{i}`` ``[B, K_i, classes]`` and ``drop_layer{i}`` ``[B, S_i - K_i, classes]``
        (kept and dropped tokens, most confident first), ``comb_outs`` ``[B, classes]`` — the
        outputs the switches leave (``ori_out`` without any). With return_ranks, also
        ``rank_layer{i}`` (int64 ``[B, S_i]``: token indices by confidence, the first K_i kept).

        train: BatchNorm batch statistics (updating the running ones), dropout and drop path;
        by default the mode set with :meth:`train` / :meth:`eval` (eval after construction).
        image_level (eval only): ``FPN1_layer{i}`` as its token mean ``[B, 1, classes]``, all a
        prediction reads of it (the selector ranks tokens by ``layer{i}``): the classifier's last
        product then runs on the token mean of its input, as it is linear — the same values up to
        rounding for a fraction of the work. Nothing goes back through such a forward."""
        x = self._images(x)
        mode = self.training if train is None else bool(train)
        with self._claim() as net:
            out = net.forward(x, train=mode, image_level=bool(image_level))
        if not return_ranks:
            out = {k: v for k, v in out.items() if not k.startswith("rank_")}
        return out

    def predict(self, x) -> np.ndarray:
        """Class probabilities ``[B, classes]`` (float32) in eval mode: the softmax of each
        image-level score — the token mean of ``FPN1_layer{i}`` and ``layer{i}``, and
        ``comb_outs`` — summed and divided by their number (9 with every switch on, SPEC.md §6;
        the ablations average the heads they have). It runs :meth:`forward` with image_level."""
        return _evaluate.ensemble_probabilities(self.forward(x, train=False, image_level=True)).astype(np.float32)

    def train_step(self, x, y, temperature: float = 64.0, lambda_c: float = 1.0, lambda_b: float = 0.3,
                   lambda_n: float = 5.0, lambda_s: float = 0.0, lambda_r: float = 1.375,
                   accumulation_steps: int = 1, train: bool = True) -> Dict[str, float]:
        """Forward, objective (SPEC.md §4) and backward in one call; parameter gradients
        ACCUMULATE (call :meth:`zero_grad` after each optimiser step).

        y: class indices ``[B]`` (integers), or class probabilities ``[B, classes]`` (floats, as
        ``torch.nn.functional.cross_entropy`` takes them): soft targets, which label smoothing and
        mixup/cutmix make (:mod:`herbs.mixup`). The cross-entropy terms (comb, layer, select, ori)
        then compute timm's SoftTargetCrossEntropy, ``Σ_c −t_c·log_softmax(x)_c``, which for mixed
        targets ``λ·onehot(a) + (1−λ)·onehot(b)`` is ``λ·CE(a) + (1−λ)·CE(b)``; drop and refine do
        not depend on the targets.

        The objective: ``comb`` = λ_c·CE(comb_outs), ``layer`` = λ_b·Σ_i CE(token mean of
        layer{i}), ``drop`` = λ_n·Σ_i MSE(tanh(drop_layer{i}), −1), ``select`` = λ_s·Σ_i CE over
        kept tokens, ``refine`` = λ_r·Σ_i KLDivLoss(log_softmax(FPN1_layer{i}/T),
        softmax(layer{i}/T)) with the target detached (``ori`` = CE(ori_out) without switches).
        Defaults are the release's (T = 64; for epoch e the release uses 64·0.5^⌊e/10⌋).

        accumulation_steps: the number of batches whose gradients are summed before an
        optimiser step; the gradient is that of total / accumulation_steps (the release divides
        by update_freq = 4, or by the size of a last, shorter group).
        train: False runs the step with BatchNorm running statistics and without dropout/drop path.

        Returns ``{"total", "comb", "layer", "drop", "select", "refine"}`` (the terms this
        configuration has), each already weighted by its λ and not divided by accumulation_steps."""
        x = self._images(x)
        y = self._labels(y, x.shape[0])
        options = dict(temperature=temperature, lambda_c=lambda_c, lambda_b=lambda_b, lambda_n=lambda_n,
                       lambda_s=lambda_s, lambda_r=lambda_r, accumulation_steps=accumulation_steps)
        with self._claim() as net:
            return net.train_step(x, y, train=bool(train), **options)

    def zero_grad(self) -> None:
        """Sets every parameter gradient to zero."""
        with self._claim() as net:
            net.zero_grad()

    def tap_gradients(self, x, output_gradients: Callable[[Dict[str, np.ndarray]], Mapping[str, np.ndarray]]
                      ) -> Tuple[Dict[str, np.ndarray], Dict[str, Tuple[np.ndarray, np.ndarray]]]:
        """What explaining a prediction needs (heat maps, :mod:`herbs.heatmap`): the backbone's
        four taps and the gradient of a score at each.

        Runs an eval-mode forward of images x ``[B, 3, H, W]``, calls
        ``output_gradients(outputs)`` with its outputs (those of :meth:`forward`), which returns
        ``{output name: d score / d output}`` (float32, the output's shape; outputs it leaves out
        get no gradient), and back-propagates that to the taps. Returns ``(outputs, taps)`` with
        ``taps = {"backbone.layer1": (activation, gradient), ..., "backbone.layer4": ...}``, each
        ``[B, S_i, C_i]`` float32 with the tokens in row-major order of the tap's grid; the
        gradient is the whole one at the tap (what its classifiers send and what flows back from
        the stages above).

        The backward adds into the parameter gradients as :meth:`train_step` does: call
        :meth:`zero_grad` afterwards, and do not call this between a train_step and its
        optimiser step."""
        x = self._images(x)
        with self._claim() as net:
            outputs = {k: v for k, v in net.forward(x, train=False).items() if not k.startswith("rank_")}
            net.backward(dict(output_gradients(outputs)), probe_grads=True)
            return outputs, net.probes()

    def export_onnx(self, path: str, outputs: str = "predict", class_names: Optional[Sequence[str]] = None) -> str:
        """Writes the eval-mode inference graph to an ONNX file (for ONNX Runtime, OpenVINO,
        TensorRT), built from this model's settings and state dict with the ``onnx`` package
        (``pip install herbs[onnx]``), without PyTorch. Input ``images`` ``[batch, 3, H, W]``
        (normalised as for :meth:`predict`; the batch is dynamic). `outputs`: ``"predict"``
        (default) gives ``probabilities``, :meth:`predict`'s scores; ``"all"`` also gives
        :meth:`forward`'s outputs by name (17 with every switch on). `class_names` are stored in
        the file's metadata (``class_names``, JSON). Swin and ResNet backbones; see
        :mod:`herbs.export`. Returns `path`."""
        from herbs.export import export_onnx

        return export_onnx(self, path, outputs=outputs, class_names=class_names)

    # ------------------------------------------------------------------------------------------
    # the state of the random streams

    def training_state(self) -> Dict[str, int]:
        """What decides the model's future random numbers besides its tensors:
        ``{"seed": s, "step": n}`` — the seed of the dropout and drop-path streams and the number
        of train-mode forward passes so far (``forward(train=True)`` and ``train_step`` count; the
        masks of a pass are drawn from (seed, its step, layer)).

        A checkpoint needs it beside :meth:`state_dict` for a resumed run to draw the masks an
        uninterrupted one would: :func:`herbs.train.train` saves it as the checkpoint's top-level
        ``"training_state"``, so the state dict under ``"model"`` keeps the release's keys only
        (the release's ``load_state_dict`` refuses keys it does not know)."""
        with self._claim() as net:
            return {"seed": net.seed, "step": net.step}

    def load_training_state(self, state: Mapping) -> None:
        """Restores what :meth:`training_state` returned: the next train-mode pass draws the masks
        of ``state["step"]`` under ``state["seed"]`` (integers in [0, 2**64)). The parameters are
        unchanged; a seed set here changes the random streams, not the initialisation."""
        if not isinstance(state, Mapping) or set(state) != {"seed", "step"}:
            found = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"a training state is a mapping with keys 'seed' and 'step', got {found}")
        for key in ("seed", "step"):
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2 ** 64:
                raise ValueError(f"training state '{key}' must be an integer in [0, 2**64), got {value!r}")
        with self._claim() as net:
            net.seed, net.step = int(state["seed"]), int(state["step"])

    # ------------------------------------------------------------------------------------------
    # tensors

    def _view(self, block: np.ndarray, row) -> np.ndarray:
        _, _, shape, offset, size = row
        return block[offset:offset + size].reshape(shape)

    def named_parameters(self) -> List[Tuple[str, np.ndarray]]:
        """``[(name, array)]`` for every trainable tensor, in PyTorch's order and shapes. The arrays
        are live float32 views of the engine's memory: writing into them changes the model (from the
        next forward or train_step on)."""
        params = self._net.params
        return [(row[0], self._view(params, row)) for row in self._table if row[1] == "parameter"]

    def named_buffers(self) -> List[Tuple[str, np.ndarray]]:
        """``[(name, array)]`` for BatchNorm running statistics and counters (live float32 views;
        ``num_batches_tracked`` is held as float32 here, int64 in :meth:`state_dict`)."""
        buffers = self._net.buffers
        return [(row[0], self._view(buffers, row)) for row in self._table if row[1] != "parameter"]

    def grads(self) -> Dict[str, np.ndarray]:
        """``{name: gradient}`` of every parameter: live float32 views of the engine's gradients."""
        grads = self._net.grads
        return {row[0]: self._view(grads, row) for row in self._table if row[1] == "parameter"}

    def flat_parameters(self) -> np.ndarray:
        """The whole parameter block as one live float32 array (tensors at the offsets of
        ``_C.Net.tensors()``, padded to 16 floats; padding is zero): an optimiser's flat loop."""
        return self._net.params

    def flat_gradients(self) -> np.ndarray:
        """The gradient block with the same layout as :meth:`flat_parameters`."""
        return self._net.grads

    @property
    def num_parameters(self) -> int:
        return sum(row[4] for row in self._table if row[1] == "parameter")

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer by the release's names (``backbone.*``,
        ``fpn_down.*``, ``fpn_classifier_down_layer{i}.*``, ``fpn_up.*``, ``fpn_classifier_up_layer{i}.*``,
        ``combiner.*``), float32, with ``num_batches_tracked`` as int64 — what the release's
        ``torch.save({"model": ...})`` holds, and what its ``PluginMoodel.load_state_dict(...,
        strict=False)`` takes (the only keys it would miss are those it does not need: a Swin
        backbone's recomputed ``attn_mask``/``relative_position_index`` buffers and its unused
        ImageNet ``norm``/``head``)."""
        with self._claim() as net:
            return OrderedDict(_state.state_dict_from(net))

    def load_state_dict(self, state_dict: Mapping, strict: bool = True) -> _state.LoadResult:
        """Copies tensors into the model by name (arrays of any float dtype; torch tensors work
        too). Accepts :meth:`state_dict` output and the release's checkpoints (pass
        ``ckpt["model"]``): keys the model does not use — a Swin backbone's ``head``/``norm`` and
        recomputed buffers, a ResNet's ``fc`` — are skipped; a ``module.`` prefix
        (DataParallel) is removed; a Swin backbone in timm >= 0.9's layout is converted.

        strict: missing or unexpected keys raise :class:`herbs.state.StateDictError`; shapes
        must always match. Nothing is copied unless everything fits. Returns
        ``(missing_keys, unexpected_keys)``."""
        sd = self._normalise(state_dict)
        if self._spec.convert is not None:
            backbone = self._spec.convert(_state.strip_prefix(sd, "backbone."))
            sd = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
            sd.update(_state.add_prefix(backbone, "backbone."))
        with self._claim() as net:
            result = _state.load_into(self._table, {"params": net.params, "buffers": net.buffers}, sd, strict=strict,
                                      skip=self._spec.unused_keys("backbone."))
            net.params_written()
            return result

    def load_pretrained(self, path: str) -> _state.LoadResult:
        """Loads backbone weights from a file of any format :mod:`herbs.weights` reads
        (``torch.save`` archives, safetensors, ``.npz``): Microsoft's Swin ``.pth``, timm files
        (timm >= 0.9 Swin layouts are converted; a ViT's position embedding for another image size
        is resized as the release does), torchvision/timm ResNet-50, torchvision EfficientNet-B7,
        or a HERBS release checkpoint (its ``backbone.*`` part). Every backbone tensor must be
        present with its shape; the file's classifier (head), final norm and recomputed buffers are
        skipped; the head keeps its values. Returns ``(missing_keys, unexpected_keys)`` of the
        backbone."""
        sd = self._normalise(_weights.load_file(path))
        if any(k.startswith("backbone.") for k in sd):
            sd = _state.strip_prefix(sd, "backbone.")
        if self._spec.convert is not None:
            sd = self._spec.convert(sd)
        table = [(name[len("backbone."):], kind, shape, offset, size) for name, kind, shape, offset, size in self._table
                 if name.startswith("backbone.")]
        if self._spec.fit is not None:
            sd = self._spec.fit(sd, {name: shape for name, _, shape, _, _ in table})
        with self._claim() as net:
            result = _state.load_into(table, {"params": net.params, "buffers": net.buffers}, sd, strict=True,
                                      skip=self._spec.unused_keys())
            net.params_written()
            return result

    @staticmethod
    def _normalise(state_dict: Mapping) -> Dict[str, np.ndarray]:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"a state dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
        sd = {str(k): (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
              for k, v in state_dict.items()}
        if sd and all(k.startswith("module.") for k in sd):
            sd = _state.strip_prefix(sd, "module.")
        return sd

    def __repr__(self) -> str:
        return (f"herbs.Model(backbone={self.backbone!r}, num_classes={self.num_classes}, img_size={self.img_size}, "
                f"parameters={self.num_parameters / 1e6:.1f}M, precision={self.precision!r})")
