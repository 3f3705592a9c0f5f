"""Figures and tables for reports: the student's architecture, candidates' cost vs score, per-sublayer error.

Pure functions of plain data (operator specs, lists, dicts). Charts are drawn on a bare
`matplotlib.figure.Figure` (no pyplot, no global figure registry, nothing to close) and
written atomically as PNG; each returns the written path as str.

Operator specs, one per sublayer (sublayer i = 2*b + (0 attn, 1 mlp) of block b):
    {"op": "teacher"} | {"op": "identity"} | {"op": "linear"}
    {"op": "attention", "heads", "kv_heads", "head_dim"} | {"op": "mlp", "hidden"}
Teacher dims: {"heads", "kv_heads", "head_dim", "hidden", "hidden_size"}.
"""

from __future__ import annotations

import math
import numbers
import textwrap
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from unast_core.model.ops import OpSpec
from unast_core.store import atomic_path

KINDS = ("attn", "mlp")
KIND_MARKERS = {"attn": "o", "mlp": "s"}
MISSING = "—"


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, numbers.Real) and math.isnan(v))


def _save(fig: Figure, path: str | Path) -> str:
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return str(path)


def width_fraction(spec: dict[str, Any], kind: str, dims: dict[str, int]) -> float:
    """Fraction of the teacher sublayer's width that `spec` keeps (teacher 1.0, identity 0.0).

    attention: heads*head_dim / (teacher heads*head_dim); mlp: hidden / teacher hidden.
    linear has no width, so it is measured by parameters: its H*H + H weights over the teacher
    sublayer's approximate weight count (bias-free), with H = hidden_size:
        attention  2*H*(heads*head_dim) + 2*H*(kv_heads*head_dim)   (q, o  +  k, v)
        mlp        3*H*hidden                                        (gate, up, down)
    """
    op, h = spec["op"], dims["hidden_size"]
    if op in ("teacher", "compressed"):  # a compressed teacher sublayer keeps the teacher's width
        return 1.0
    if op == "identity":
        return 0.0
    if op == "attention":
        return spec["heads"] * spec["head_dim"] / (dims["heads"] * dims["head_dim"])
    if op == "mlp":
        return spec["hidden"] / dims["hidden"]
    if op == "linear":
        if kind == "attn":
            teacher = 2 * h * dims["heads"] * dims["head_dim"] + 2 * h * dims["kv_heads"] * dims["head_dim"]
        else:
            teacher = 3 * h * dims["hidden"]
        return (h * h + h) / teacher
    raise ValueError(f"unknown op {op!r}")


def architecture_chart(layers: list[dict[str, dict[str, Any]]], dims: dict[str, int],
                       path: str | Path, title: str = "") -> str:
    """Two panels (attention, MLP): bar per block = width_fraction; teacher sublayers hatched, skips marked x."""
    width = max(6.0, 0.3 * len(layers) + 2)
    fig = Figure(figsize=(width, 5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    blocks = range(len(layers))
    for ax, kind, color in zip(axes, KINDS, ("tab:blue", "tab:orange")):
        specs = [layer[kind] for layer in layers]
        heights = [width_fraction(s, kind, dims) for s in specs]
        bars = ax.bar(blocks, heights, color=color, edgecolor="black", linewidth=0.5)
        for bar, spec in zip(bars, specs):
            if spec["op"] == "teacher":
                bar.set_hatch("//")
            elif spec["op"] == "compressed":
                bar.set_hatch("..")
        skipped = [b for b, s in zip(blocks, specs) if s["op"] == "identity"]
        if skipped:  # an empty unclipped line has no extent, and constrained layout collapsed the axes around it
            ax.plot(skipped, [0.0] * len(skipped), "x", color="black", markersize=7, clip_on=False)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("fraction of\nteacher width")
        ax.set_title("attention" if kind == "attn" else "MLP", fontsize=10)
    axes[-1].set_xlabel("block")
    axes[-1].set_xticks(list(blocks))
    legend = [Patch(facecolor="white", edgecolor="black", hatch="//", label="teacher sublayer"),
              Patch(facecolor="white", edgecolor="black", label="replaced (downsized / linear)"),
              Line2D([], [], marker="x", color="black", linestyle="", label="skipped")]
    if any(layer[k]["op"] == "compressed" for layer in layers for k in KINDS):
        legend.append(Patch(facecolor="white", edgecolor="black", hatch="..", label="compressed teacher (App. H)"))
    fig.legend(handles=legend, fontsize=8, loc="outside lower center", ncol=3)
    if title:  # wrapped to the figure's width: a wider title leaves constrained layout no room for the panels
        fig.suptitle(fit_title(title, width, 12))
    return _save(fig, path)


def fit_title(title: str, width_in: float, fontsize: float) -> str:
    """`title` wrapped at spaces into lines that fit `width_in` inches at `fontsize` points (an average glyph is
    about 0.6 em wide)."""
    chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.wrap(title, chars)) or title


def cost_score_scatter(points: list[dict[str, Any]], path: str | Path, title: str = "") -> str:
    """Candidates' relative latency (x) vs Eq. 2 score (y); colour per label, marker per kind, size by params."""
    points = [p for p in points if not _is_missing(p["score"])]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    labels = list(dict.fromkeys(p["label"] for p in points))
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    for p in points:
        ax.scatter(p["latency"], p["score"], color=colors[p["label"]], marker=KIND_MARKERS[p["kind"]],
                   s=20 + 150 * p.get("params", 0.0), alpha=0.7, edgecolors="black", linewidths=0.4)
    nonzero = [abs(p["score"]) for p in points if p["score"] != 0]
    if nonzero and max(nonzero) / min(nonzero) > 100:  # scores span decades
        ax.set_yscale("symlog", linthresh=min(nonzero))
    handles = [Line2D([], [], marker="o", color=colors[lab], linestyle="", label=lab) for lab in labels]
    handles += [Line2D([], [], marker=KIND_MARKERS[k], color="gray", linestyle="", label=k) for k in KINDS]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("latency relative to the teacher sublayer")
    ax.set_ylabel("score (Eq. 2)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def sublayer_error_chart(errors: dict[str, Sequence[float | None]], path: str | Path, title: str = "") -> str:
    """Normalized MSE (log y) per sublayer index, one line per candidate label through the sublayers it applies to."""
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    n = max((len(v) for v in errors.values()), default=0)
    for label, values in errors.items():
        kept = [(i, v) for i, v in enumerate(values) if not _is_missing(v) and v > 0]  # log scale: drop <= 0
        ax.plot([i for i, _ in kept], [v for _, v in kept], marker="o", markersize=3, label=label)
    step = max(1, math.ceil(n / 16))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [f"{i // 2}.{KINDS[i % 2]}" for i in ticks], rotation=45, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("sublayer")
    ax.set_ylabel("normalized MSE")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if errors:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def _cell(v: Any) -> str:
    if _is_missing(v):
        return MISSING
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """GitHub markdown table; floats to 4 significant digits, None/NaN as an em dash."""
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def scatter_points(table: dict[str, Any], lut: dict[str, Any]) -> list[dict[str, Any]]:
    """Figure 3's points: every scored candidate's latency and parameters relative to its teacher sublayer."""
    points = []
    for i, name in enumerate(table["sublayers"]):
        lat, par = lut["costs"]["latency"][i], lut["costs"]["params"][i]
        for j, spec in enumerate(lut["pool"]):
            score = table["scores"][i][j]
            if j and score is not None and math.isfinite(score):
                points.append({"label": OpSpec.of(spec).label, "kind": name.split(".")[1], "score": score,
                               "latency": lat[j] / lat[0] if lat[0] else 0.0, "params": par[j] / par[0] if par[0] else 0.0})
    return points
