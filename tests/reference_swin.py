"""A PyTorch Swin Transformer backbone written from SPEC.md §2 with torch.nn, in the old timm /
Microsoft layout (patch merging at the end of stages 1-3), for parity tests and benchmarks.

Parameter and buffer names are old timm's (`layers.{s}.blocks.{b}.attn.qkv.weight`,
`layers.{s}.downsample.reduction.weight`, `...attn.relative_position_index`, `...attn_mask`), so
its state dict looks like a real checkpoint's. `forward` returns the four taps of SPEC.md §1
([B, S_i, C_i], after each stage's merging; the last stage has none).

Drop path draws its per-sample keep mask from torch.rand, as timm does, unless a function
`drop_path_scales(block, branch, batch) -> tensor [batch]` is given, which lets a test replay the
masks of another implementation exactly.
"""
import torch
import torch.nn as nn

VARIANTS = {  # embed_dim, depths, num_heads (SPEC.md §2)
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def relative_position_index(window):
    """[N, N] index into the bias table: (dy + w - 1)·(2w - 1) + (dx + w - 1), query minus key."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N]
    return (rel[0] + window - 1) * (2 * window - 1) + rel[1] + window - 1


def window_partition(x, window):
    """[B, H, W, C] -> [B·nW, N, C], windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_reverse(windows, window, H, W):
    """[B·nW, N, C] -> [B, H, W, C]"""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shifted_window_mask(H, W, window, shift):
    """[nW, N, N]: -100 between tokens of different pre-roll regions, 0 elsewhere (old timm)."""
    labels = torch.zeros(1, H, W, 1)
    regions = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for rows in regions:
        for cols in regions:
            labels[:, rows, cols, :] = count
            count += 1
    windows = window_partition(labels, window).squeeze(-1)  # [nW, N]
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def window_attention(qkv, table, index, mask, heads):
    """qkv [B·nW, N, 3C] (the qkv Linear's output, windowed) -> [B·nW, N, C] before proj."""
    Bw, N, C3 = qkv.shape
    C = C3 // 3
    d = C // heads
    q, k, v = qkv.reshape(Bw, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    attn = (q * d ** -0.5) @ k.transpose(-2, -1)
    attn = attn + table[index.reshape(-1)].reshape(N, N, heads).permute(2, 0, 1)
    if mask is not None:
        nW = mask.shape[0]
        attn = (attn.view(Bw // nW, nW, heads, N, N) + mask.to(attn.dtype)[None, :, None]).view(Bw, heads, N, N)
    attn = attn.softmax(-1)
    return (attn @ v).transpose(1, 2).reshape(Bw, N, C)


def shifted_window_attention(qkv, table, H, W, heads, window, shift):
    """qkv [B, H·W, 3C] on all tokens -> [B, H·W, C]: roll, partition, attend, reverse, roll back."""
    B, L, C3 = qkv.shape
    x = qkv.view(B, H, W, C3)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    mask = shifted_window_mask(H, W, window, shift).to(qkv.dtype) if shift else None
    out = window_attention(window_partition(x, window), table, relative_position_index(window), mask, heads)
    out = window_reverse(out, window, H, W)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out.reshape(B, L, C3 // 3)


class DropPath(nn.Module):
    """Per-sample stochastic depth, scaled by 1/keep (train mode only)."""

    def __init__(self, prob, block, branch, owner):
        super().__init__()
        self.prob, self.block, self.branch = prob, block, branch
        self.owner = [owner]  # the SwinTransformer, for its drop_path_scales hook (not a submodule)

    def forward(self, x):
        if not self.training or self.prob == 0:
            return x
        hook = self.owner[0].drop_path_scales
        if hook is not None:
            scale = hook(self.block, self.branch, x.shape[0]).to(x.dtype)
        else:
            keep = 1 - self.prob
            scale = torch.floor(keep + torch.rand(x.shape[0], dtype=x.dtype)) / keep
        return x * scale.view(-1, *([1] * (x.dim() - 1)))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, window, qkv_bias):
        super().__init__()
        self.heads, self.window = heads, window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask):
        return self.proj(window_attention(self.qkv(x), self.relative_position_bias_table,
                                          self.relative_position_index, mask, self.heads))


class SwinBlock(nn.Module):
    def __init__(self, dim, resolution, heads, window, shift, mlp_ratio, qkv_bias, drop_path, index, owner):
        super().__init__()
        self.resolution = resolution
        if resolution <= window:  # one window of the whole map, no shift
            window, shift = resolution, 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, qkv_bias)
        self.drop_path1 = DropPath(drop_path, index, 0, owner)
        self.drop_path2 = DropPath(drop_path, index, 1, owner)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(resolution, resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x):
        B, L, C = x.shape
        H = W = self.resolution
        y = self.norm1(x).view(B, H, W, C)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), self.attn_mask)
        y = window_reverse(y, self.window, H, W)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path1(y.reshape(B, L, C))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    def __init__(self, dim, resolution):
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        B, L, C = x.shape
        x = x.view(B, self.resolution, self.resolution, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(B, -1, 4 * C)))


class Stage(nn.Module):  # old timm's BasicLayer
    def __init__(self, blocks, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """The backbone; with `num_classes` it also has timm's final `norm` and `head` (unused by
    forward, present so the state dict carries the keys a classification checkpoint has)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.1,
                 num_classes=0):
        super().__init__()
        self.drop_path_scales = None
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        resolution, dim, index, stages = img_size // patch_size, embed_dim, 0, []
        for s, (depth, heads) in enumerate(zip(depths, num_heads)):
            blocks = []
            for b in range(depth):
                blocks.append(SwinBlock(dim, resolution, heads, window_size, 0 if b % 2 == 0 else window_size // 2,
                                        mlp_ratio, qkv_bias, rates[index], index, self))
                index += 1
            stages.append(Stage(blocks, PatchMerging(dim, resolution) if s < 3 else None))
            if s < 3:
                resolution, dim = resolution // 2, dim * 2
        self.layers = nn.ModuleList(stages)
        if num_classes:
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, images):
        x = self.patch_embed(images)
        taps = []
        for stage in self.layers:
            x = stage(x)
            taps.append(x)
        return taps


def swin(variant=None, **config):
    """SwinTransformer from a herbs-style config dict, with herbs's defaults: `variant` picks
    SPEC.md's dims, and the window is 12 at 384 px, 7 otherwise."""
    config.setdefault("window_size", 12 if config.get("img_size", 224) == 384 else 7)
    if variant is not None:
        dim, depths, heads = VARIANTS[variant]
        config = {"embed_dim": dim, "depths": depths, "num_heads": heads, **config}
    return SwinTransformer(**config)


def load_from_herbs(model, net):
    """Copies every parameter of the herbs net `net` into `model` by name (shapes must agree)."""
    state = model.state_dict()
    with torch.no_grad():
        for name, kind, shape, offset, size in net.tensors():
            assert kind == "parameter", name
            value = torch.from_numpy(net.params[offset:offset + size].reshape(shape).copy())
            assert state[name].shape == value.shape, (name, state[name].shape, value.shape)
            state[name].copy_(value)
    return model
