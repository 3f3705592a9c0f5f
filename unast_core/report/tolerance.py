"""Appendix H findings: which sublayers tolerate quantization and sparsity, by depth and kind.

From a run's score table (Eq. 2: the increase of validation loss when only that sublayer is replaced) for
its compressed-teacher candidates, and from the chosen architecture: what each compression costs per kind
and third of the depth, the most and least tolerant sublayers, and which sublayers got which compression.
Plain data in, plain data / markdown / a figure out; nothing is reported that the table does not hold.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from unast_core.model.ops import OpSpec
from unast_core.report.findings import KIND_COLORS, KIND_NAMES, THIRDS, _finite, _parse, _third
from unast_core.report.figures import KINDS, _save, markdown_table


def tolerance(table: dict[str, Any], layers: list[dict[str, dict[str, Any]]] | None = None) -> dict[str, Any] | None:
    """{"candidates": [{label, by_kind: {kind: mean}, by_third: {kind: [mean per third]}, most_tolerant,
    least_tolerant}], "chosen": [{sublayer, label}]}, or None when the pool has no compressed candidate."""
    cols = [j for j, spec in enumerate(table["pool"]) if spec["op"] == "compressed"]
    if not cols:
        return None
    parsed = [_parse(name, i) for i, name in enumerate(table["sublayers"])]
    n_blocks = max(b for b, _ in parsed) + 1
    out = []
    for j in cols:
        points = [(name, b, k, row[j]) for name, (b, k), row in zip(table["sublayers"], parsed, table["scores"])
                  if _finite(row[j])]
        if not points:
            continue
        by_kind = {k: statistics.fmean([s for _, _, kk, s in points if kk == k]) for k in KINDS
                   if any(kk == k for _, _, kk, _ in points)}
        by_third = {k: [statistics.fmean(v) if (v := [s for _, b, kk, s in points if kk == k and
                                                       _third(b, n_blocks) == t]) else None for t in range(3)]
                    for k in by_kind}
        ranked = sorted(points, key=lambda p: p[3])
        out.append({"label": OpSpec.of(table["pool"][j]).label, "by_kind": by_kind, "by_third": by_third,
                    "most_tolerant": [(n, s) for n, _, _, s in ranked[:3]],
                    "least_tolerant": [(n, s) for n, _, _, s in ranked[::-1][:3]]})
    chosen = [{"sublayer": f"{b:02d}.{k}", "label": OpSpec.of(layer[k]).label}
              for b, layer in enumerate(layers or []) for k in KINDS if layer[k]["op"] == "compressed"]
    return {"candidates": out, "chosen": chosen}


def tolerance_markdown(t: dict[str, Any]) -> str:
    lines = ["## Compressed teacher sublayers (Appendix H)", "",
             "Score (Eq. 2, increase of validation loss in nats) of each compressed-teacher candidate, mean per "
             "kind and third of the depth; lower tolerates the compression better.", ""]
    header = ["candidate"] + [f"{KIND_NAMES[k]} {third}" for k in KINDS for third in ("all", *THIRDS)]
    rows = [[c["label"]] + [x for k in KINDS for x in ([c["by_kind"].get(k)] + (c["by_third"].get(k) or [None] * 3))]
            for c in t["candidates"]]
    lines += [markdown_table(header, rows), ""]
    for c in t["candidates"]:
        kinds = sorted(c["by_kind"], key=c["by_kind"].get)
        lines.append(f"- {c['label']}: " + (f"{KIND_NAMES[kinds[0]]} tolerates it better than {KIND_NAMES[kinds[-1]]} "
                     f"({c['by_kind'][kinds[0]]:.4g} vs {c['by_kind'][kinds[-1]]:.4g}); " if len(kinds) > 1 else "")
                     + "most tolerant " + ", ".join(f"{n} ({s:.3g})" for n, s in c["most_tolerant"])
                     + "; least " + ", ".join(f"{n} ({s:.3g})" for n, s in c["least_tolerant"]))
    if t["chosen"]:
        lines += ["", f"The chosen architecture compresses {len(t['chosen'])} sublayers: "
                  + ", ".join(f"{c['sublayer']} {c['label']}" for c in t["chosen"]) + "."]
    else:
        lines += ["", "The chosen architecture uses no compressed candidate."]
    return "\n".join(lines)


def tolerance_chart(table: dict[str, Any], path: str | Path, title: str = "") -> str:
    """Score per block of every compressed candidate, attention and MLP in two panels."""
    from matplotlib.figure import Figure

    cols = [j for j, spec in enumerate(table["pool"]) if spec["op"] == "compressed"]
    parsed = [_parse(name, i) for i, name in enumerate(table["sublayers"])]
    fig = Figure(figsize=(8, 5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, kind in zip(axes, KINDS):
        for n, j in enumerate(cols):
            points = [(b, row[j]) for (b, k), row in zip(parsed, table["scores"]) if k == kind and _finite(row[j])]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=f"C{n}", label=OpSpec.of(table["pool"][j]).label)
        ax.set_title(KIND_NAMES[kind], fontsize=10, color=KIND_COLORS[kind])
        ax.set_ylabel("score, nats")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1].set_xlabel("block")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def tolerance_for(results: dict[str, Any]) -> dict[str, Any] | None:
    """`tolerance` of a finished run from its results dict (None without a readable score table)."""
    from unast_core.store import read_json

    if not results.get("scores_path"):
        return None
    try:
        table = read_json(Path(results["scores_path"]))
    except (OSError, ValueError):
        return None
    return tolerance(table, results.get("layers"))
