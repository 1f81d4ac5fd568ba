"""The backbones :class:`herbs.Model` knows: one :class:`BackboneSpec` per architecture, each in
its own module (``swin.py``, ``resnet.py``, ``patches.py``, ``vit.py``, ``efficientnet.py``), and the registry that Model, the
``herbs`` command and weights loading consult. docs/BACKBONES.md tells how to add one.

A spec says what Python needs to know about an architecture; the engine's C backbone (which
computes it, registers its tensors and chooses the pyramid that suits it) is named by
:attr:`BackboneSpec.kind`.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple, Union

from herbs.backbones import efficientnet, patches, resnet, swin, vit
from herbs.backbones.spec import BackboneSpec

__all__ = ["BackboneSpec", "SPECS", "BACKBONES", "register", "resolve"]


#: Every registered spec by kind, in registration order.
SPECS: Dict[str, BackboneSpec] = {}

#: Backbone names herbs.Model knows, with their engine settings (``"backbone"``: the kind, and
#: the variant's settings). Names may carry timm's pretrained-tag suffixes (".ms_in22k",
#: "_in22k"), which are ignored.
BACKBONES: Dict[str, dict] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Adds a spec to :data:`SPECS` and its variants to :data:`BACKBONES`; returns it."""
    if spec.kind in SPECS:
        raise ValueError(f"a backbone of kind {spec.kind!r} is registered already")
    clashes = sorted(set(spec.variants) & set(BACKBONES))
    if clashes:
        raise ValueError(f"backbone names {clashes} are registered already")
    SPECS[spec.kind] = spec
    BACKBONES.update({name: dict(backbone=spec.kind, **settings) for name, settings in spec.variants.items()})
    return spec


def _untagged(name: str) -> str:
    """A timm name without its pretrained tag: "swin_base_patch4_window7_224.ms_in22k" and
    "swin_base_patch4_window7_224_in22k" are "swin_base_patch4_window7_224"."""
    name = name.split(".")[0]
    return name[: -len("_in22k")] if name.endswith("_in22k") else name


def resolve(backbone: Union[str, Mapping]) -> Tuple[BackboneSpec, dict]:
    """(spec, engine settings) of a name of :data:`BACKBONES` or of a dict of settings with
    ``"backbone"``: a registered kind. The settings are a new dict the caller may change."""
    if isinstance(backbone, Mapping):
        settings = dict(backbone)
        kind = settings.get("backbone")
        if kind not in SPECS:
            raise ValueError(f"a backbone dict needs 'backbone': one of {sorted(SPECS)}, got {kind!r}")
        return SPECS[kind], settings
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a name or a dict of settings, got {type(backbone).__name__}")
    name = _untagged(backbone)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: expected one of {', '.join(BACKBONES)}, "
                         "or a dict such as {'backbone': 'swin', 'variant': 'tiny', 'img_size': 224}")
    settings = dict(BACKBONES[name])
    return SPECS[settings["backbone"]], settings


for _module in (swin, resnet, patches, vit, efficientnet):  # the order of BACKBONES
    register(_module.SPEC)
