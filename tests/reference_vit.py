"""A PyTorch Vision Transformer backbone written with torch.nn after timm's VisionTransformer
(timm 1.0: models/vision_transformer.py, layers/attention.py, layers/mlp.py), as the HERBS release
builds it from ``timm.create_model('vit_base_patch16_224_miil_in21k')`` and cuts it with
``create_feature_extractor(return_nodes={'blocks.8': 'layer1', ..., 'blocks.11': 'layer4'})``,
for parity tests and benchmarks.

Parameter names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.{i}.norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``); like the
release's feature extractor it has no final ``norm`` and ``head`` (nothing reaches them), so its
state dict is a release checkpoint's backbone part. ``forward`` returns the outputs of the four tap blocks, every token included
([B, 1 + grid², D], the class token first), which is what the release's pyramid and selector
receive. LayerNorm eps 1e-6, exact GELU, attention through F.scaled_dot_product_attention as
timm's fused path. timm itself is not imported (it needs torchvision).

Drop path draws its per-sample keep mask from torch.rand, as timm does, unless a function
``drop_path_scales(block, branch, batch) -> tensor [batch]`` is given, which lets a test replay the
masks of another implementation exactly.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_swin import Mlp  # timm's layers/mlp.py, the same in both models


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, qkv_bias, drop_prob, index, drop_path_scales):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_prob, self.index, self.drop_path_scales = drop_prob, index, drop_path_scales

    def drop_path(self, x, branch):
        if not self.training or self.drop_prob == 0:
            return x
        if self.drop_path_scales is not None:
            scale = self.drop_path_scales(self.index, branch, x.shape[0]).to(x.dtype)
        else:
            keep = 1 - self.drop_prob
            scale = torch.rand(x.shape[0], dtype=x.dtype).add_(keep).floor_().div_(keep)
        return x * scale.view(-1, 1, 1)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)), 0)
        return x + self.drop_path(self.mlp(self.norm2(x)), 1)


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm's VisionTransformer (class token, learned position embedding, pre-norm blocks),
    returning the outputs of blocks `taps` (default: the last four)."""

    def __init__(self, img_size=448, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 qkv_bias=False, drop_path_rate=0.0, taps=None, drop_path_scales=None):
        super().__init__()
        grid = img_size // patch_size
        self.taps = list(taps) if taps is not None else [max(depth - 4 + i, 0) for i in range(4)]
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 1e-6)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, embed_dim) * 0.02)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], i, drop_path_scales)
                                      for i in range(depth)])

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        outs = {}
        for i, block in enumerate(self.blocks[:max(self.taps) + 1]):
            x = block(x)
            outs[i] = x
        return [outs[i] for i in self.taps]


def vit(**config):
    """A VisionTransformer from engine-style config keys (qkv_bias as 0/1 or bool)."""
    config = dict(config)
    if "qkv_bias" in config:
        config["qkv_bias"] = bool(config["qkv_bias"])
    return VisionTransformer(**config)


def load_from_herbs(model, net):
    """Copies an engine net's tensors into `model` by name (strictly); returns the model."""
    from herbs.state import state_dict_from
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state_dict_from(net).items()})
    return model
