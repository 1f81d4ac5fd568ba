"""``curves.png``: a run's curves by epoch, drawn with Pillow (matplotlib is not a dependency) —
the training loss and its terms, validation top-1 (ensemble, combiner, and the EMA's when there is
one), and the learning rate — from ``metrics.jsonl``'s records. Written after every epoch, so the
picture at the end of a run (or of a killed one) has every epoch."""
from __future__ import annotations

import math
import os
from typing import List, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from herbs.files import atomic_write

PANEL_W, PANEL_H, MARGIN = 520, 400, (64, 34, 18, 46)  # margin: left, top, right, bottom
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
Series = Tuple[str, List[float], List[float]]  # (label, x, y)


def nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
    """About `count` round values covering [low, high] (steps of 1, 2 or 5 × 10^k)."""
    if not high > low:  # one value: a range around it
        pad = abs(low) * 0.1 or 0.5
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if value and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.6g}"


def draw_panel(draw: ImageDraw.ImageDraw, origin: Tuple[int, int], title: str, series: Sequence[Series],
               font) -> None:
    """One chart at `origin` (its top-left): axes, ticks, a line and dots per series, a legend."""
    left, top = origin[0] + MARGIN[0], origin[1] + MARGIN[1]
    right, bottom = origin[0] + PANEL_W - MARGIN[2], origin[1] + PANEL_H - MARGIN[3]
    draw.text((left, origin[1] + 8), title, fill="black", font=font)
    draw.rectangle((left, top, right, bottom), outline="black")
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if math.isfinite(y)]
    if not points:
        draw.text((left + 10, top + 10), "no data", fill="gray", font=font)
        return
    xt = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    yt = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))

    def at(x, y):
        return (left + (x - xt[0]) / (xt[-1] - xt[0]) * (right - left),
                bottom - (y - yt[0]) / (yt[-1] - yt[0]) * (bottom - top))

    for x in xt:
        px = at(x, yt[0])[0]
        draw.line((px, bottom, px, bottom + 4), fill="black")
        draw.text((px - 3 * len(_label(x)), bottom + 6), _label(x), fill="black", font=font)
    for y in yt:
        py = at(xt[0], y)[1]
        draw.line((left, py, right, py), fill=(230, 230, 230))
        draw.line((left - 4, py, left, py), fill="black")
        draw.text((origin[0] + 4, py - 6), _label(y), fill="black", font=font)
    draw.text(((left + right) // 2 - 15, bottom + 22), "epoch", fill="black", font=font)
    for k, (label, xs, ys) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        line = [at(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for px, py in line:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        draw.line((right - 120, top + 10 + 14 * k, right - 100, top + 10 + 14 * k), fill=colour, width=2)
        draw.text((right - 96, top + 4 + 14 * k), label, fill="black", font=font)


def curve_panels(records: List[dict]) -> List[Tuple[str, List[Series]]]:
    """(title, series) of each panel from metrics.jsonl records."""
    epochs = [r["epoch"] for r in records]

    def series(key: str, label: str, scale: float = 1.0) -> List[Series]:
        ys = [scale * r[key] if isinstance(r.get(key), (int, float)) else math.nan for r in records]
        return [(label, epochs, ys)] if any(math.isfinite(y) for y in ys) else []

    losses = series("loss_total", "total")
    terms = dict.fromkeys(k for r in records for k in r if k.startswith("loss_") and k != "loss_total")
    for key in terms:
        losses += series(key, key[len("loss_"):])
    accuracy = (series("val_ensemble", "ensemble", 100) + series("val_comb_outs", "combiner", 100)
                + series("val_ema_ensemble", "EMA ensemble", 100))
    return [("training loss", losses), ("validation top-1 (%)", accuracy), ("learning rate", series("lr", "lr"))]


def plot_curves(records: List[dict], path: str) -> str:
    """Draws the curves of `records` (metrics.jsonl's) into the PNG `path`, atomically; returns path."""
    panels = curve_panels(records)
    image = Image.new("RGB", (PANEL_W * len(panels), PANEL_H), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for i, (title, series) in enumerate(panels):
        draw_panel(draw, (i * PANEL_W, 0), title, series, font)
    with atomic_write(path) as f:
        image.save(f, format="PNG")
    return path


def plot_run(out_dir: str, records: List[dict]) -> str:
    """out_dir/curves.png from the run's records."""
    return plot_curves(records, os.path.join(out_dir, "curves.png"))
