"""Evaluation tables in the SR papers' layout: one row per method, one column per metric.

Markdown for reading (an arrow per column says which way is better, the best value in bold,
a caption says what was measured), CSV of the means for spreadsheets, JSON with every
image's score for whoever wants to look closer.
"""

from __future__ import annotations

import csv
import io
import json

from megasr.model.evaluation.evaluate import Evaluation, MethodScores, MetricColumn

ARROWS = {"higher": "↑", "lower": "↓"}
# Decimals as the papers print them; anything else gets 4.
DECIMALS = {"psnr": 2, "brisque": 2, "piqe": 2}
UNITS = {"psnr": " (dB)"}
NOT_AVAILABLE = "n/a"


def to_markdown(evaluation: Evaluation) -> str:
    columns = evaluation.columns
    header = ["Method", *(_heading(c) for c in columns)]
    lines = [
        _caption(evaluation),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    best = {c.metric.name: _best(evaluation.rows, c) for c in columns}
    for row in evaluation.rows:
        cells = [row.method]
        for column in columns:
            mean = row.mean(column.metric.name)
            text = NOT_AVAILABLE if mean is None else _number(column, mean)
            cells.append(
                f"**{text}**" if mean is not None and mean == best[column.metric.name] else text
            )
        lines.append("| " + " | ".join(cells) + " |")
    notes = _notes(evaluation)
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def to_csv(evaluation: Evaluation) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", *(c.metric.name for c in evaluation.columns)])
    for row in evaluation.rows:
        means = [row.mean(c.metric.name) for c in evaluation.columns]
        writer.writerow([row.method, *("" if m is None else repr(m) for m in means)])
    return buffer.getvalue()


def to_json(evaluation: Evaluation) -> str:
    document = {
        "dataset": evaluation.dataset,
        "setting": evaluation.setting,
        "scale": evaluation.scale,
        "border_crop": evaluation.scale,
        "images": evaluation.images,
        "metrics": [
            {
                "name": c.metric.name,
                "kind": c.metric.kind,
                "better": c.metric.better,
                "available": not c.unavailable,
                "reason": c.unavailable or None,
            }
            for c in evaluation.columns
        ],
        "rows": [
            {
                "method": row.method,
                "mean": {c.metric.name: row.mean(c.metric.name) for c in evaluation.columns},
                "per_image": row.scores,
                "failures": row.failures,
            }
            for row in evaluation.rows
        ],
    }
    return json.dumps(document, indent=2, allow_nan=True) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}


def _caption(evaluation: Evaluation) -> str:
    count = len(evaluation.images)
    names = {c.metric.name for c in evaluation.columns}
    luma = [n.upper() for n in ("psnr", "ssim") if n in names]
    on_y = f"; {' and '.join(luma)} on the Y channel" if luma else ""
    return (
        f"x{evaluation.scale} on `{evaluation.dataset}` ({count} image{'s' * (count != 1)}), "
        f"{evaluation.setting}. Every metric on 8-bit outputs with a {evaluation.scale}-pixel "
        f"border cropped{on_y}. Best in bold."
    )


def _heading(column: MetricColumn) -> str:
    name = column.metric.name
    return f"{name.upper()}{UNITS.get(name, '')}{ARROWS[column.metric.better]}"


def _number(column: MetricColumn, value: float) -> str:
    return f"{value:.{DECIMALS.get(column.metric.name, 4)}f}"


def _best(rows: list[MethodScores], column: MetricColumn) -> float | None:
    """The best mean of a column, when at least two rows compete for it."""
    means = [m for m in (row.mean(column.metric.name) for row in rows) if m is not None]
    if len(means) < 2:
        return None
    return max(means) if column.metric.better == "higher" else min(means)


def _notes(evaluation: Evaluation) -> list[str]:
    notes = [
        f"- {c.metric.name.upper()}: not available: {c.unavailable}"
        for c in evaluation.columns
        if c.unavailable
    ]
    for row in evaluation.rows:
        notes.extend(
            f"- {metric.upper()} of {row.method} failed: {reason}"
            for metric, reason in row.failures.items()
        )
    return notes
