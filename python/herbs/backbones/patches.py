"""The engine's smallest backbone, strided patch convolutions of the image (one per tap), which
tests and times the HERBS head on its own. It has no published checkpoints and no named variants:
use it with a dict, ``{"backbone": "patches", "img_size": 32, "patch_grid": (8, 4, 2, 2),
"patch_channels": (8, 16, 32, 32)}``."""
from __future__ import annotations

from herbs.backbones.spec import BackboneSpec

__all__ = ["SPEC"]

SPEC = BackboneSpec(kind="patches", title="patches")
