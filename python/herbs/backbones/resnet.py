"""ResNet (He et al. 2016), ResNet-50 as the release uses it.

torchvision's and timm's ResNet-50 use the same names (``conv1``, ``bn1``,
``layer{1..4}.{b}.conv{1,2,3}``, ``bn{1,2,3}``, ``downsample.0/1``, and ``fc`` for the
classifier in both), which are the engine's, so ResNet files need no conversion; the
classifier is skipped with :data:`RESNET_UNUSED`.
"""
from __future__ import annotations

from typing import Tuple

from herbs.backbones.spec import BackboneSpec

__all__ = ["SPEC", "RESNET_UNUSED"]

#: Keys of ResNet checkpoints that a backbone does not use: the ImageNet classifier.
RESNET_UNUSED: Tuple[str, ...] = ("fc.*",)

SPEC = BackboneSpec(kind="resnet", title="ResNet", unused=RESNET_UNUSED,
                    variants={"resnet50": dict(depths=(3, 4, 6, 3), img_size=448)})  # the release trains it at 448 px
