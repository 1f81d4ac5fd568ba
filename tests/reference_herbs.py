"""The HERBS model in PyTorch, written from SPEC.md §3–§4 with the release's module names (so
its state_dict keys are the release's), as the reference the engine is compared with.

Differences from the release, all deliberate and stated in SPEC.md:
- the selector sorts stably (ties: lower token index first; the release's torch.sort is not stable);
- the CNN path has a bottom-up pyramid (2x2 average pooling, Linear projections), which the release
  lacks;
- the combiner's dropout rate is a parameter (tests set it to 0 to compare training steps).

A backbone is any module returning four taps: token tensors [B, S_i, C_i] (token path) or NCHW
maps [B, C_i, H_i, W_i] (CNN path).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(c_in, hidden, c_out, conv=False):
    """The release's Proj_ layers: Linear–ReLU–Linear, or 1x1 Conv2d–ReLU–1x1 Conv2d."""
    if conv:
        return nn.Sequential(nn.Conv2d(c_in, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, c_out, 1))
    return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, c_out))


def token_classifier(fpn, classes):
    return nn.Sequential(nn.Conv1d(fpn, fpn, 1), nn.BatchNorm1d(fpn), nn.ReLU(), nn.Conv1d(fpn, classes, 1))


def tokens_of(x):
    """[B, C, H, W] -> [B, H*W, C]; tokens pass through."""
    return x.flatten(2).transpose(1, 2) if x.dim() == 4 else x


class FPNDown(nn.Module):
    def __init__(self, channels, tokens, fpn, cnn):
        super().__init__()
        self.cnn = cnn
        for i, c in enumerate(channels, 1):
            self.add_module(f"Proj_layer{i}", mlp(c, c, fpn, conv=cnn))
            if not cnn and i > 1:
                self.add_module(f"Up_layer{i}", nn.Conv1d(tokens[i - 1], tokens[i - 2], 1))

    def forward(self, taps):
        x = [getattr(self, f"Proj_layer{i}")(t) for i, t in enumerate(taps, 1)]
        for i in range(3, 0, -1):  # x[i] is layer{i+1}
            upper = x[i]
            if not self.cnn:
                upper = getattr(self, f"Up_layer{i + 1}")(upper)
            elif upper.shape[-1] != x[i - 1].shape[-1]:
                upper = F.interpolate(upper, scale_factor=2, mode="bilinear", align_corners=False)
            x[i - 1] = x[i - 1] + upper
        return x


class FPNUp(nn.Module):
    def __init__(self, tokens, fpn, cnn):
        super().__init__()
        self.cnn = cnn
        for i in range(1, 5):
            self.add_module(f"Proj_layer{i}", mlp(fpn, fpn, fpn))
            if not cnn and i < 4:
                self.add_module(f"Down_layer{i}", nn.Conv1d(tokens[i - 1], tokens[i], 1))

    def forward(self, feats):
        if self.cnn:  # Linear projections on channels-last maps
            x = [getattr(self, f"Proj_layer{i}")(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                 for i, f in enumerate(feats, 1)]
        else:
            x = [getattr(self, f"Proj_layer{i}")(f) for i, f in enumerate(feats, 1)]
        for i in range(3):
            lower = x[i]
            if not self.cnn:
                lower = getattr(self, f"Down_layer{i + 1}")(lower)
            elif lower.shape[-1] != x[i + 1].shape[-1]:
                lower = F.avg_pool2d(lower, 2)
            x[i + 1] = x[i + 1] + lower
        return x


class Selector(nn.Module):
    def __init__(self, channels, classes, num_selects, plain):
        super().__init__()
        self.num_selects = num_selects
        self.plain = plain  # no FPN: the selector classifies the backbone's tokens itself
        if plain:
            for i, c in enumerate(channels, 1):
                self.add_module(f"classifier_l_layer{i}", nn.Linear(c, classes))

    def forward(self, feats, logits):
        """feats: [B, S_i, C] per tap; logits: dict with layer{i} (filled here when plain).
        Adds select_layer{i}, drop_layer{i}; returns the kept features and the rankings."""
        kept, ranks = [], []
        for i, f in enumerate(feats, 1):
            name = f"layer{i}"
            if self.plain:
                logits[name] = getattr(self, f"classifier_l_{name}")(f)
            probs = torch.softmax(logits[name], -1)
            top = torch.softmax(logits[name].mean(1), -1).argmax(-1)
            order = torch.stack([torch.sort(probs[b, :, top[b]], descending=True, stable=True)[1]
                                 for b in range(f.shape[0])])
            k = self.num_selects[i - 1]
            gather = lambda t, idx: torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
            kept.append(gather(f, order[:, :k]))
            logits[f"select_{name}"] = gather(logits[name], order[:, :k])
            logits[f"drop_{name}"] = gather(logits[name], order[:, k:])
            ranks.append(order)
        return kept, ranks


class GCNCombiner(nn.Module):
    """SPEC.md §3.6 on [B, F, ΣK] (the release's layout)."""

    def __init__(self, total_num_selects, classes, fpn, dropout):
        super().__init__()
        joints = total_num_selects // 64
        self.param_pool0 = nn.Linear(total_num_selects, joints)
        self.adj1 = nn.Parameter(torch.eye(joints) / 100 + 1 / 100)
        self.conv1 = nn.Conv1d(fpn, fpn, 1)
        self.batch_norm1 = nn.BatchNorm1d(fpn)
        self.conv_q1 = nn.Conv1d(fpn, fpn // 4, 1)
        self.conv_k1 = nn.Conv1d(fpn, fpn // 4, 1)
        self.alpha1 = nn.Parameter(torch.zeros(1))
        self.param_pool1 = nn.Linear(joints, 1)
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = nn.Linear(fpn, classes)

    def forward(self, kept):
        hs = torch.cat(kept, 1).transpose(1, 2)  # [B, F, ΣK]
        hs = self.param_pool0(hs)
        q = self.conv_q1(hs).mean(1)
        k = self.conv_k1(hs).mean(1)
        A = self.adj1 + torch.tanh(q.unsqueeze(-1) - k.unsqueeze(1)) * self.alpha1
        hs = self.conv1(hs)
        hs = torch.matmul(hs, A)
        hs = self.batch_norm1(hs)
        hs = self.param_pool1(hs)
        hs = self.dropout(hs)
        return self.classifier(hs.flatten(1))


class HERBS(nn.Module):
    def __init__(self, backbone, channels, tokens, classes, num_selects, fpn_size=None, cnn=False, use_fpn=True,
                 use_selection=True, use_combiner=True, dropout=0.1):
        super().__init__()
        fpn_size = fpn_size or channels[-1]
        self.backbone = backbone
        self.cnn, self.use_fpn, self.use_selection, self.use_combiner = cnn, use_fpn, use_selection, use_combiner
        if not (use_fpn or use_selection):
            self.classifier = nn.Linear(channels[-1], classes)
        if use_fpn:
            self.fpn_down = FPNDown(channels, tokens, fpn_size, cnn)
            for i in range(1, 5):
                self.add_module(f"fpn_classifier_down_layer{i}", token_classifier(fpn_size, classes))
            self.fpn_up = FPNUp(tokens, fpn_size, cnn)
            for i in range(1, 5):
                self.add_module(f"fpn_classifier_up_layer{i}", token_classifier(fpn_size, classes))
        if use_selection:
            self.selector = Selector(channels, classes, num_selects, plain=not use_fpn)
        if use_combiner:
            self.combiner = GCNCombiner(sum(num_selects), classes, fpn_size, dropout)

    def forward(self, x):
        """-> (outputs by the engine's names, rankings per tap or None)."""
        taps = self.backbone(x)
        out, ranks = {}, None
        if self.use_fpn:
            down = self.fpn_down(taps)
            up = self.fpn_up(down)
            for i in range(1, 5):
                for prefix, feats, name in (("down", down, f"FPN1_layer{i}"), ("up", up, f"layer{i}")):
                    rows = tokens_of(feats[i - 1]).transpose(1, 2)  # [B, F, S]
                    out[name] = getattr(self, f"fpn_classifier_{prefix}_layer{i}")(rows).transpose(1, 2)
            feats = [tokens_of(u) for u in up]
        else:
            feats = [tokens_of(t) for t in taps]
        if self.use_selection:
            kept, ranks = self.selector(feats, out)
        if self.use_combiner:
            out["comb_outs"] = self.combiner(kept)
        if not (self.use_fpn or self.use_selection):
            out["ori_out"] = self.classifier(feats[-1].mean(1))
        return out, ranks


def herbs_loss(out, labels, temperature=64.0, lambda_c=1.0, lambda_b=0.3, lambda_n=5.0, lambda_s=0.0,
               lambda_r=1.375, accumulation_steps=1):
    """SPEC.md §4 (the release's main.py loop): returns (total / accumulation_steps, terms), with
    each term already weighted by its λ. `labels`: class indices [B], or class probabilities
    [B, classes] (soft targets, which F.cross_entropy takes as they are)."""
    terms = {}
    if labels.is_floating_point():
        labels = labels.to(next(iter(out.values())).dtype)
    if "comb_outs" in out:
        terms["comb"] = lambda_c * F.cross_entropy(out["comb_outs"], labels)
    if "layer1" in out:
        terms["layer"] = lambda_b * sum(F.cross_entropy(out[f"layer{i}"].mean(1), labels) for i in range(1, 5))
    if "drop_layer1" in out:
        terms["drop"] = lambda_n * sum(F.mse_loss(torch.tanh(out[f"drop_layer{i}"]),
                                                  -torch.ones_like(out[f"drop_layer{i}"])) for i in range(1, 5))
        sel = [out[f"select_layer{i}"] for i in range(1, 5)]
        terms["select"] = lambda_s * sum(
            F.cross_entropy(s.reshape(-1, s.shape[-1]), labels.repeat_interleave(s.shape[1], dim=0)) for s in sel)
    if "FPN1_layer1" in out:
        kl = nn.KLDivLoss(reduction="mean")
        terms["refine"] = lambda_r * sum(
            kl(F.log_softmax(out[f"FPN1_layer{i}"] / temperature, -1),
               F.softmax(out[f"layer{i}"].detach() / temperature, -1)) for i in range(1, 5))
    if "ori_out" in out:
        terms["ori"] = F.cross_entropy(out["ori_out"], labels)
    total = sum(terms.values())
    return total / accumulation_steps, {"total": total, **terms}


class Patches(nn.Module):
    """The reference of herbs_c/nn/patches.c: tap i = Conv2d(3, C_i, p_i, stride p_i)."""

    def __init__(self, img_size=32, grid=(8, 4, 2, 2), channels=(8, 16, 32, 32), maps=False):
        super().__init__()
        self.maps = maps  # NCHW maps (CNN path) instead of tokens
        for i, (g, c) in enumerate(zip(grid, channels), 1):
            p = img_size // g
            self.add_module(f"tap{i}", nn.Conv2d(3, c, p, stride=p))

    def forward(self, x):
        taps = [getattr(self, f"tap{i}")(x) for i in range(1, 5)]
        return taps if self.maps else [tokens_of(t) for t in taps]
