"""``summary.csv``: one row per epoch, in timm's layout (``timm.utils.update_summary``: ``epoch``,
``train_*``, ``eval_*``, ``lr``), written next to ``metrics.jsonl`` and made from it, so that both
always hold the same epochs (a resumed run cuts ``metrics.jsonl`` back, and the next summary follows).

Columns: ``epoch``; ``train_loss`` (the objective's total, mean over the epoch's batches) and
``train_loss_<term>`` for each term; ``eval_top1`` — the ensemble's validation top-1 in percent, as
timm reports accuracies — and ``eval_<head>_top1`` per head; with an EMA of the weights the same for
it as ``eval_ema_top1`` and ``eval_ema_<head>_top1``; other validation numbers as ``eval_<name>``
unchanged; ``lr``, the learning rate of the epoch's last batch.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import List

from herbs.evaluate import IMAGE_HEADS, TOKEN_HEADS
from herbs.files import atomic_write

_HEADS = set(TOKEN_HEADS + IMAGE_HEADS)


def read_metrics(out_dir: str) -> List[dict]:
    """The records of out_dir/metrics.jsonl, one per epoch (whole lines only)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n") and line.strip()]


def _eval_column(name: str) -> str:
    """val_ensemble -> eval_top1, val_ema_layer1 -> eval_ema_layer1_top1, val_x -> eval_x."""
    rest = name[len("val_"):]
    prefix = "ema_" if rest.startswith("ema_") else ""
    rest = rest[len(prefix):]
    if rest == "ensemble":
        return f"eval_{prefix}top1"
    return f"eval_{prefix}{rest}_top1" if rest in _HEADS else f"eval_{prefix}{rest}"


def summary_row(record: dict) -> dict:
    """The summary.csv row of one metrics.jsonl record."""
    row = {"epoch": record["epoch"]}
    for key, value in record.items():
        if key.startswith("loss_"):
            row["train_loss" if key == "loss_total" else f"train_{key}"] = value
    for key, value in record.items():
        if not key.startswith("val_") or key.endswith("count") or not isinstance(value, (int, float)):
            continue
        column = _eval_column(key)
        row[column] = round(100 * value, 6) if column.endswith("top1") else value  # percent, as timm
    if "lr" in record:
        row["lr"] = record["lr"]
    return row


def write_summary(out_dir: str, records: List[dict]) -> str:
    """Writes out_dir/summary.csv (atomically) from `records`; returns its path."""
    rows = [summary_row(r) for r in records]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = os.path.join(out_dir, "summary.csv")
    with atomic_write(path) as f:
        f.write(text.getvalue().encode())
    return path
