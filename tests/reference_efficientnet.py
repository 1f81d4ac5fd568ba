"""A PyTorch EfficientNet (B family) written with torch.nn after torchvision's
models/efficientnet.py and ops/misc.py, with torchvision's module names, so its state_dict is a
torchvision state dict: the parity reference of herbs' EfficientNet backbone and of
benchmarks/bench_efficientnet.py. forward returns the outputs of features.4..features.7 (NCHW),
the release's taps.

torchvision builds each stage from a row of its table, (expand_ratio, kernel, stride, in, out,
layers), scaled by width and depth multipliers; B7 is width 2.0, depth 3.1, BatchNorm eps 1e-3
and momentum 0.01, stochastic depth 0.2. Here the rows are given already scaled (B7_STAGES), so
small test configs need no multipliers. Stochastic depth draws its masks from torch, or, when
`drop_path_scales` is set to a function (block index, batch) -> scales [B], from it (tests
replay herbs' masks through it)."""
from functools import partial

import torch
from torch import nn

# torchvision's efficientnet_b7 table after width 2.0 and depth 3.1:
# (expand_ratio, kernel, stride, in_channels, out_channels, layers)
B7_STAGES = [(1, 3, 1, 64, 32, 4), (6, 3, 2, 32, 48, 7), (6, 5, 2, 48, 80, 7), (6, 3, 2, 80, 160, 10),
             (6, 5, 1, 160, 224, 10), (6, 5, 2, 224, 384, 13), (6, 3, 1, 384, 640, 4)]


def make_divisible(v, divisor=8):
    """torchvision's _make_divisible with min_value = divisor."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation: conv (no bias) - norm - activation, as .0, .1, .2."""

    def __init__(self, in_c, out_c, kernel, stride=1, groups=1, norm=nn.BatchNorm2d, activation=True):
        layers = [nn.Conv2d(in_c, out_c, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), norm(out_c)]
        if activation:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation with SiLU: pool - fc1 - SiLU - fc2 - sigmoid - scale."""

    def __init__(self, channels, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x):
        s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(s) * x


class MBConv(nn.Module):
    def __init__(self, owner, index, expand_ratio, kernel, stride, in_c, out_c, drop_prob, norm):
        super().__init__()
        self.owner = [owner]  # not a submodule: the model whose drop_path_scales to consult
        self.index, self.drop_prob = index, drop_prob
        self.use_res_connect = stride == 1 and in_c == out_c
        expanded = make_divisible(in_c * expand_ratio)
        layers = []
        if expanded != in_c:
            layers.append(ConvNormActivation(in_c, expanded, 1, norm=norm))
        layers.append(ConvNormActivation(expanded, expanded, kernel, stride, groups=expanded, norm=norm))
        layers.append(SqueezeExcitation(expanded, max(1, in_c // 4)))
        layers.append(ConvNormActivation(expanded, out_c, 1, norm=norm, activation=False))
        self.block = nn.Sequential(*layers)

    def stochastic_depth(self, x):
        """torchvision.ops.StochasticDepth(p, "row")."""
        if not self.training or self.drop_prob == 0:
            return x
        replay = self.owner[0].drop_path_scales
        if replay is not None:
            scale = replay(self.index, x.shape[0]).to(x.dtype)
        else:
            keep = 1 - self.drop_prob
            scale = torch.empty(x.shape[0], dtype=x.dtype).bernoulli_(keep) / keep
        return x * scale.view(-1, 1, 1, 1)

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + x
        return result


class EfficientNet(nn.Module):
    """`stages` rows as B7_STAGES; `stem` the first conv's width (the first row's input); `eps`,
    `momentum` the BatchNorms'; `num_classes` adds torchvision's head (features.8, classifier),
    which forward does not use, so that state dicts look like torchvision's."""

    def __init__(self, stages=B7_STAGES, drop_path_rate=0.2, eps=1e-3, momentum=0.01, in_chans=3, num_classes=None):
        super().__init__()
        self.drop_path_scales = None
        norm = partial(nn.BatchNorm2d, eps=eps, momentum=momentum)
        layers = [ConvNormActivation(in_chans, stages[0][3], 3, 2, norm=norm)]
        total, index = sum(row[5] for row in stages), 0
        for expand, kernel, stride, in_c, out_c, n in stages:
            blocks = []
            for b in range(n):
                blocks.append(MBConv(self, index, expand, kernel, stride if b == 0 else 1, in_c if b == 0 else out_c,
                                     out_c, drop_path_rate * index / total, norm))
                index += 1
            layers.append(nn.Sequential(*blocks))
        if num_classes:
            last = stages[-1][4]
            layers.append(ConvNormActivation(last, 4 * last, 1, norm=norm))
        self.features = nn.Sequential(*layers)
        if num_classes:
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(4 * stages[-1][4], num_classes))
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        taps = []
        for i in range(8):
            x = self.features[i](x)
            if i >= 4:
                taps.append(x)
        return taps


def config_of(stages, img_size, **settings):
    """The herbs engine config of the same net."""
    return dict(img_size=img_size, depths=[r[5] for r in stages], channels=[stages[0][3]] + [r[4] for r in stages],
                kernels=[r[1] for r in stages], strides=[r[2] for r in stages],
                expand_ratios=[r[0] for r in stages], **settings)
