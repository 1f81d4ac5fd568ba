"""EfficientNet (Tan & Le 2019), EfficientNet-B7 as the release builds it: torchvision's
``efficientnet_b7`` tapped at ``features.4``..``features.7``, trained at 448 px, with a pyramid
of ``fpn_size`` 512 and 32 tokens kept per tap (the release's ``build_efficientnet``; its
``proj_type="Conv"`` and ``upsample_type="Bilinear"`` are the CNN pyramid herbs uses for every
convolutional backbone).

torchvision's names (``features.0.{0,1}``, ``features.{s}.{b}.block.{i}.{0,1}``,
``block.{i}.fc{1,2}``) are the engine's, so torchvision files need no conversion; its head conv
``features.8`` and ``classifier`` are not part of the backbone and are skipped with
:data:`EFFICIENTNET_UNUSED`. A HERBS release checkpoint has no such keys (its feature extractor
keeps only what the taps use)."""
from __future__ import annotations

from typing import Tuple

from herbs.backbones.spec import BackboneSpec

__all__ = ["SPEC", "EFFICIENTNET_UNUSED", "B7"]

#: Keys of torchvision EfficientNet checkpoints that the backbone does not use: the head.
EFFICIENTNET_UNUSED: Tuple[str, ...] = ("features.8.*", "classifier.*")

#: torchvision's efficientnet_b7: its stage table after width 2.0 and depth 3.1, and the
#: BatchNorm eps and momentum it sets for B5..B7.
B7 = dict(depths=(4, 7, 7, 10, 10, 13, 4), channels=(64, 32, 48, 80, 160, 224, 384, 640),
          kernels=(3, 3, 5, 3, 5, 5, 3), strides=(1, 2, 2, 2, 1, 2, 1), expand_ratios=(1, 6, 6, 6, 6, 6, 6),
          bn_eps=1e-3, bn_momentum=0.01)

SPEC = BackboneSpec(kind="efficientnet", title="EfficientNet", unused=EFFICIENTNET_UNUSED,
                    options=("drop_path_rate",),
                    variants={"efficientnet_b7": dict(B7, img_size=448, fpn_size=512, num_selects=(32, 32, 32, 32))})
