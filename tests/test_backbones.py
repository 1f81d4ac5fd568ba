"""herbs.backbones: one spec per architecture and the registry that herbs.Model, the herbs command
and weights loading consult (names with timm's tags, unused checkpoint keys, conversions)."""
import numpy as np
import pytest

import herbs
from herbs import backbones, state
from herbs.backbones import BackboneSpec, swin


def test_names_resolve_to_their_spec_and_settings():
    assert herbs.BACKBONES is backbones.BACKBONES
    assert list(backbones.SPECS) == ["swin", "resnet", "patches", "vit", "efficientnet"]
    assert list(backbones.BACKBONES) == [
        "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
        "swin_base_patch4_window12_384", "swin_large_patch4_window7_224", "swin_large_patch4_window12_384",
        "resnet50", "vit_base_patch16_224_miil_in21k", "vit_base_patch16_224_miil", "vit_base_patch16",
        "efficientnet_b7"]
    spec, settings = backbones.resolve("swin_large_patch4_window12_384")
    assert spec is swin.SPEC
    assert settings == {"backbone": "swin", "variant": "large", "img_size": 384, "window_size": 12}
    settings["img_size"] = 1  # a copy: the registry keeps its values
    assert backbones.BACKBONES["swin_large_patch4_window12_384"]["img_size"] == 384
    for tagged in ("swin_base_patch4_window7_224.ms_in22k", "swin_base_patch4_window7_224_in22k"):
        assert backbones.resolve(tagged)[1]["variant"] == "base"
    spec, settings = backbones.resolve("resnet50.tv_in1k")
    assert spec.kind == "resnet" and settings == {"backbone": "resnet", "depths": (3, 4, 6, 3), "img_size": 448}
    spec, settings = backbones.resolve("efficientnet_b7")
    assert spec.kind == "efficientnet" and settings["img_size"] == 448 and settings["depths"] == (4, 7, 7, 10, 10, 13, 4)
    assert (settings["fpn_size"], settings["num_selects"]) == (512, (32, 32, 32, 32))  # the release's head
    spec, settings = backbones.resolve({"backbone": "patches", "img_size": 32})
    assert spec.kind == "patches" and settings == {"backbone": "patches", "img_size": 32}
    with pytest.raises(ValueError, match="unknown backbone 'convnext_tiny'"):
        backbones.resolve("convnext_tiny")
    with pytest.raises(ValueError, match=r"a backbone dict needs 'backbone': one of "
                                         r"\['efficientnet', 'patches', 'resnet', 'swin', 'vit'\]"):
        backbones.resolve({"backbone": "convnext"})
    with pytest.raises(TypeError, match="a name or a dict"):
        backbones.resolve(3)


def test_unused_keys_of_release_and_backbone_files():
    assert swin.SPEC.unused_keys() == ("head.*", "norm.*", "*.attn_mask", "*.relative_position_index")
    assert swin.SPEC.unused_keys("backbone.") == ("backbone.head.*", "backbone.norm.*", "*.attn_mask",
                                                  "*.relative_position_index")
    assert backbones.SPECS["resnet"].unused_keys("backbone.") == ("backbone.fc.*",)
    assert backbones.SPECS["patches"].unused_keys("backbone.") == ()
    assert backbones.SPECS["efficientnet"].unused_keys() == ("features.8.*", "classifier.*")
    assert state.SWIN_UNUSED == swin.SWIN_UNUSED and state.RESNET_UNUSED == ("fc.*",)  # the old names still work


def test_register_refuses_clashes_and_keeps_the_registry():
    before_specs, before_names = dict(backbones.SPECS), dict(backbones.BACKBONES)
    with pytest.raises(ValueError, match="kind 'swin' is registered already"):
        backbones.register(BackboneSpec(kind="swin", title="Swin again"))
    with pytest.raises(ValueError, match=r"names \['resnet50'\] are registered already"):
        backbones.register(BackboneSpec(kind="resnet_again", title="ResNet", variants={"resnet50": {}}))
    assert backbones.SPECS == before_specs and backbones.BACKBONES == before_names


def test_swin_conversion_to_the_engine_layout():
    w = np.zeros(2, np.float32)
    original = {"layers.0.blocks.0.norm1.weight": w, "layers.0.downsample.norm.weight": w,
                "layers.1.blocks.0.norm1.weight": w, "head.weight": w}
    timm = swin.swin_original_to_timm(original)
    assert set(timm) == {"layers.0.blocks.0.norm1.weight", "layers.1.downsample.norm.weight",
                         "layers.1.blocks.0.norm1.weight", "head.fc.weight"}
    assert swin.SPEC.convert(timm) == original and swin.SPEC.convert(original) == original
    partial = {"patch_embed.proj.bias": w}  # no stages: left for loading to report what is missing
    assert swin.SPEC.convert(partial) == partial
    with pytest.raises(ValueError, match="not a Swin state dict"):
        swin.swin_to_original(partial)
    assert backbones.SPECS["resnet"].convert is None  # torchvision's and timm's names are the engine's


def test_vit_names_are_the_release_model():
    release = {"backbone": "vit", "img_size": 448, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
               "qkv_bias": 0, "taps": (8, 9, 10, 11), "fpn_size": 512, "num_selects": (32, 32, 32, 32)}
    for name in ("vit_base_patch16_224_miil_in21k", "vit_base_patch16_224_miil.in21k", "vit_base_patch16"):
        spec, settings = backbones.resolve(name)
        assert spec.kind == "vit" and settings == release, name
    assert backbones.SPECS["vit"].unused_keys("backbone.") == ("backbone.head.*", "backbone.norm.*",
                                                               "backbone.fc_norm.*")
    assert backbones.SPECS["vit"].convert is None  # timm's names are the engine's
