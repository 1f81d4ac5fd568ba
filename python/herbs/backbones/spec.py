"""What a backbone spec holds (see :mod:`herbs.backbones`)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One architecture, as timm's model modules own theirs.

    Attributes:
        kind: the engine's name of the backbone, the ``"backbone"`` key of a settings dict.
        title: how messages name it (``"Swin"``).
        variants: the names :class:`herbs.Model` accepts (timm's, without pretrained tags) ->
            their engine settings (without ``"backbone"``); image sizes are part of them.
        unused: patterns (``fnmatch``) of a backbone checkpoint's keys that the model does not
            use, e.g. the ImageNet classifier; loading skips them quietly.
        options: :class:`herbs.Model` arguments that apply to this backbone only
            (``"drop_path_rate"``), passed to the engine as settings of the same name.
        convert: a backbone state dict (keys without prefix) of any layout people publish ->
            the engine's layout (names and shapes of ``Model.named_parameters()`` below
            ``backbone.``); None when files already use the engine's names.
        fit: (a converted backbone state dict, the model's backbone shapes by name) -> the dict
            with tensors that depend on the image size made to fit it (ViT's position embedding
            resized), for :meth:`herbs.Model.load_pretrained`; None when no tensor depends on it.

    A variant's settings may hold the head's ``fpn_size`` and ``num_selects`` too: defaults of
    :class:`herbs.Model` for that name (the release's, e.g. 512 and 32 per tap for ViT-B/16).
    """

    kind: str
    title: str
    variants: Mapping[str, Mapping] = dataclasses.field(default_factory=dict)
    unused: Tuple[str, ...] = ()
    options: Tuple[str, ...] = ()
    convert: Optional[Callable[[Mapping], Dict]] = None
    fit: Optional[Callable[[Mapping, Mapping], Dict]] = None

    def unused_keys(self, prefix: str = "") -> Tuple[str, ...]:
        """:attr:`unused` for keys under `prefix` (``"backbone."`` in a HERBS release checkpoint);
        patterns that start with ``*`` match at any depth and are kept as they are."""
        return tuple(p if p.startswith("*") else prefix + p for p in self.unused)
