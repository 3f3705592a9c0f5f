"""Findings of a finished run, in the style of the paper's Section 6, computed from its own scores and choices.

Inputs are plain data:
    table   the score table JSON: {"pool": [spec, ...], "sublayers": ["00.attn", "00.mlp", ...],
            "scores": [[score per pool candidate] per sublayer], ...}; a score is the increase of validation
            loss (nats) when only that sublayer is replaced by that candidate; NaN/None where the candidate
            does not apply to the sublayer's kind or failed (ignored here).
    layers  the chosen architecture, one {"attn": spec, "mlp": spec} per block; op "teacher" = kept.

`findings` returns a JSON-serialisable dict; parts that the pool or the data cannot support (no identity or
no linear candidate, all scores NaN, nothing replaced) are left out rather than filled with placeholders.
`findings_markdown` turns it into a "## Findings" section; every sentence is built from those numbers.
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from unast_core.model.ops import OpSpec
from unast_core.report.figures import KIND_MARKERS, KINDS, _save, markdown_table

KIND_NAMES = {"attn": "attention", "mlp": "MLP"}
KIND_COLORS = {"attn": "tab:blue", "mlp": "tab:orange"}  # as in figures.architecture_chart
THIRDS = ("first", "middle", "last")
CATEGORIES = ("identity", "linear", "narrower")


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _stats(values: list[float]) -> dict[str, Any] | None:
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "n": len(values)} if values else None


def _parse(name: str, index: int) -> tuple[int, str]:
    """"07.mlp" -> (7, "mlp"); falls back to the interleaved order (2*block + kind) for other names."""
    head, _, kind = name.rpartition(".")
    if kind in KINDS and head.isdigit():
        return int(head), kind
    return index // 2, KINDS[index % 2]


def _third(block: int, n_blocks: int) -> int:
    return min(2, block * 3 // n_blocks)


def findings(table: dict[str, Any], layers: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Sensitivity per kind, most/least sensitive sublayers, depth profile of the choice, linear vs skip."""
    pool = table["pool"]
    labels = [OpSpec.of(s).label for s in pool]
    ops = [s["op"] for s in pool]
    skip_col = ops.index("identity") if "identity" in ops else None
    linear_col = ops.index("linear") if "linear" in ops else None

    rows = []  # (sublayer name, block, kind, scores)
    for i, (name, scores) in enumerate(zip(table["sublayers"], table["scores"], strict=True)):
        block, kind = _parse(name, i)
        rows.append((name, block, kind, scores))
    n_blocks = len(layers)
    table_blocks = max((r[1] for r in rows), default=-1) + 1
    if table_blocks != n_blocks:
        raise ValueError(f"score table has {table_blocks} blocks but the architecture has {n_blocks}")

    def score(scores: list[Any], col: int | None) -> float | None:
        return scores[col] if col is not None and _finite(scores[col]) else None

    skip = {(b, k): score(s, skip_col) for _, b, k, s in rows}
    linear = {(b, k): score(s, linear_col) for _, b, k, s in rows}
    chosen = {(b, k): layers[b][k] for b in range(n_blocks) for k in KINDS}
    replaced = {key: spec["op"] != "teacher" for key, spec in chosen.items()}

    out: dict[str, Any] = {"n_blocks": n_blocks, "pool": labels, "kinds": {}}
    for kind in KINDS:
        k_rows = [r for r in rows if r[2] == kind]
        entry: dict[str, Any] = {"sublayers": len(k_rows)}
        candidates = {}
        for col, label in enumerate(labels):
            if ops[col] == "teacher":
                continue
            stats = _stats([s[col] for _, _, _, s in k_rows if _finite(s[col])])
            if stats:
                candidates[label] = stats
        entry["candidates"] = candidates
        for key, col in (("skip", skip_col), ("linear", linear_col)):
            if col is not None and labels[col] in candidates:
                entry[key] = candidates[labels[col]]
        specs = [chosen[(b, kind)] for b in range(n_blocks)]
        changed = [s for s in specs if s["op"] != "teacher"]
        entry["replaced"] = len(changed)
        entry["by_op"] = dict(Counter((OpSpec.of(s).label for s in changed)))
        entry["by_category"] = {c: sum(OpSpec.of(s).category == c for s in changed) for c in
                                dict.fromkeys(CATEGORIES + tuple(OpSpec.of(s).category for s in changed))}
        if skip_col is not None:
            for name, flag in (("kept", False), ("replaced", True)):
                values = [skip[(b, kind)] for b in range(n_blocks)
                          if replaced[(b, kind)] == flag and skip.get((b, kind)) is not None]
                if values:
                    entry[f"median_skip_{name}"] = statistics.median(values)
        out["kinds"][kind] = entry

    attn_skip, mlp_skip = out["kinds"]["attn"].get("skip"), out["kinds"]["mlp"].get("skip")
    if attn_skip and mlp_skip:
        if attn_skip["mean"] > 0:
            out["sensitivity_ratio"] = mlp_skip["mean"] / attn_skip["mean"]
        if attn_skip["median"] > 0:
            out["sensitivity_ratio_median"] = mlp_skip["median"] / attn_skip["median"]

    ranked = sorted(((v, name, b, k) for name, b, k, _ in rows if (v := skip[(b, k)]) is not None),
                    key=lambda t: t[0])
    if ranked:
        def item(t: tuple) -> dict[str, Any]:
            return {"sublayer": t[1], "block": t[2], "kind": t[3], "score": t[0]}
        out["most_sensitive"] = [item(t) for t in reversed(ranked[-3:])]
        out["least_sensitive"] = [item(t) for t in ranked[:3]]

    depth = []
    for t, where in enumerate(THIRDS):
        blocks = [b for b in range(n_blocks) if _third(b, n_blocks) == t]
        if not blocks:
            continue
        part: dict[str, Any] = {"third": where, "first_block": blocks[0], "last_block": blocks[-1],
                                "blocks": len(blocks)}
        for kind in KINDS:
            n_replaced = sum(replaced[(b, kind)] for b in blocks)
            part[f"{kind}_replaced"] = n_replaced
            part[f"{kind}_fraction"] = n_replaced / len(blocks)
            part[f"{kind}_skipped"] = sum(chosen[(b, kind)]["op"] == "identity" for b in blocks)
            values = [v for b in blocks if (v := skip.get((b, kind))) is not None]
            if values:
                part[f"{kind}_mean_skip"] = statistics.fmean(values)
        depth.append(part)
    out["depth"] = depth

    if skip_col is not None and linear_col is not None:
        versus = {}
        for kind in KINDS:
            pairs = [(linear[(b, kind)], skip[(b, kind)]) for b in range(n_blocks)
                     if linear.get((b, kind)) is not None and skip.get((b, kind)) is not None]
            if not pairs:
                continue
            entry = {"compared": len(pairs), "linear_better": sum(lin < sk for lin, sk in pairs)}
            ratios = [lin / sk for lin, sk in pairs if sk > 0]
            if ratios:
                entry["median_ratio"] = statistics.median(ratios)
            versus[kind] = entry
        if versus:
            out["linear_vs_skip"] = versus

    categories = [OpSpec.of(s).category for s in chosen.values()]
    out["chosen"] = {"sublayers": len(categories), "replaced": sum(c != "teacher" for c in categories),
                     **{c: categories.count(c) for c in dict.fromkeys(CATEGORIES + tuple(categories)) if c != "teacher"}}
    return out


def findings_for(results: dict[str, Any]) -> dict[str, Any] | None:
    """Findings of a finished run from its results dict, or None when it has no readable score table
    (`scores_path` missing: older runs, baselines that do not score; or the file is gone / not JSON)."""
    from unast_core.store import read_json

    path = results.get("scores_path")
    layers = results.get("layers")
    if not path or not layers:
        return None
    try:
        table = read_json(Path(path))
    except (OSError, ValueError):
        return None
    return findings(table, layers)


# ----------------------------------------------------------------------------------------------- markdown


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _times(r: float) -> str:
    return f"{r:.1f}x" if r >= 1.95 else f"{r:.2f}x"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sensitivity(f: dict[str, Any]) -> list[str]:
    a, m = f["kinds"]["attn"].get("skip"), f["kinds"]["mlp"].get("skip")
    if not (a and m):
        return []
    means = f"mean {_num(m['mean'])} vs {_num(a['mean'])} nats"
    medians = f"median {_num(m['median'])} vs {_num(a['median'])}"
    if math.isclose(m["mean"], a["mean"], rel_tol=0.05):
        lines = [f"Skipping an MLP costs about as much validation loss as skipping an attention sublayer "
                 f"(MLP vs attention: {means}; {medians})."]
    elif m["mean"] > a["mean"] and a["mean"] > 0:
        lines = [f"Skipping an MLP costs {_times(m['mean'] / a['mean'])} as much validation loss as skipping an "
                 f"attention sublayer ({means}; {medians}): MLPs are the more sensitive kind."]
    elif a["mean"] > m["mean"] and m["mean"] > 0:
        lines = [f"Skipping an attention sublayer costs {_times(a['mean'] / m['mean'])} as much validation loss as "
                 f"skipping an MLP (mean {_num(a['mean'])} vs {_num(m['mean'])} nats; median {_num(a['median'])} vs "
                 f"{_num(m['median'])}): attention is the more sensitive kind."]
    else:
        more = "MLP" if m["mean"] > a["mean"] else "attention"
        lines = [f"Skipping costs more on {more} sublayers (MLP vs attention: {means}; {medians})."]
    by_mean, by_median = m["mean"] > a["mean"], m["median"] > a["median"]
    if by_mean != by_median and m["median"] != a["median"] and not math.isclose(m["mean"], a["mean"], rel_tol=0.05):
        kind = "MLP" if by_median else "attention"
        lines.append(f"By median the order reverses: the median skip score is higher for {kind} sublayers.")
    return lines


def _extremes(f: dict[str, Any]) -> list[str]:
    if "most_sensitive" not in f:
        return []

    def show(items: list[dict[str, Any]]) -> str:
        return ", ".join(f"{i['sublayer']} ({_num(i['score'])})" for i in items)
    return [f"Most sensitive to skipping: {show(f['most_sensitive'])}; least sensitive: {show(f['least_sensitive'])}."]


def _linear(f: dict[str, Any]) -> list[str]:
    versus = f.get("linear_vs_skip")
    if not versus:
        return []
    parts = []
    for kind, v in versus.items():
        ratio = f" (median linear/skip score ratio {_num(v['median_ratio'])})" if "median_ratio" in v else ""
        parts.append(f"{v['linear_better']} of {v['compared']} {KIND_NAMES[kind]} sublayers{ratio}")
    return [f"A linear replacement scores better (lower) than skipping on {_join(parts)}."]


def _choice(f: dict[str, Any]) -> list[str]:
    chosen = f["chosen"]
    if chosen["replaced"] == 0:
        return [f"The chosen model replaces none of its {chosen['sublayers']} sublayers: it is the teacher."]
    names = {"identity": "skipped", "linear": "linear", "narrower": "narrower"}
    per_kind = []
    for kind in KINDS:
        k = f["kinds"][kind]
        how = [f"{n} {names.get(c, c)}" for c, n in k["by_category"].items() if n]
        per_kind.append(f"{k['replaced']} of {k['sublayers']} {KIND_NAMES[kind]}" + (f" ({', '.join(how)})" if how else ""))
    lines = [f"The chosen model replaces {chosen['replaced']} of {chosen['sublayers']} sublayers: {_join(per_kind)}."]
    a, m = f["kinds"]["attn"]["replaced"], f["kinds"]["mlp"]["replaced"]
    if a != m:
        more, less = ("attention", "MLP") if a > m else ("MLP", "attention")
        lines.append(f"It replaces more {more} than {less} sublayers ({max(a, m)} vs {min(a, m)}).")
    kept_vs = []
    for kind in KINDS:
        k = f["kinds"][kind]
        if "median_skip_kept" in k and "median_skip_replaced" in k:
            kept_vs.append(f"{KIND_NAMES[kind]} {_num(k['median_skip_kept'])} kept vs {_num(k['median_skip_replaced'])} "
                           "replaced")
    if kept_vs:
        lines.append(f"Median skip score of the sublayers it keeps vs replaces: {'; '.join(kept_vs)}.")
    return lines


def _depths(f: dict[str, Any]) -> list[str]:
    depth = f["depth"]
    if f["chosen"]["replaced"] == 0 or not depth:
        return []
    parts = []
    for kind in KINDS:
        top = max(d[f"{kind}_fraction"] for d in depth)
        if top == 0:
            parts.append(f"no {KIND_NAMES[kind]} sublayer is replaced")
            continue
        where = [d["third"] for d in depth if d[f"{kind}_fraction"] == top]
        share = ", ".join(f"{d['third']} {_pct(d[f'{kind}_fraction'])}" for d in depth)
        parts.append(f"{KIND_NAMES[kind]} is replaced most in the {_join(where)} third{'s' * (len(where) > 1)} ({share})")
    return [f"Compressed depths: {'; '.join(parts)}."]


def _depth_table(f: dict[str, Any]) -> str:
    depth = f["depth"]
    skips = any(d["attn_skipped"] or d["mlp_skipped"] for d in depth)
    scores = any("attn_mean_skip" in d or "mlp_mean_skip" in d for d in depth)
    header = ["third", "blocks", "attention replaced", "MLP replaced"]
    header += ["attention skipped", "MLP skipped"] * skips
    header += ["attention mean skip score", "MLP mean skip score"] * scores
    rows = []
    for d in depth:
        row = [d["third"], f"{d['first_block']}–{d['last_block']}",
               f"{d['attn_replaced']}/{d['blocks']} ({_pct(d['attn_fraction'])})",
               f"{d['mlp_replaced']}/{d['blocks']} ({_pct(d['mlp_fraction'])})"]
        row += [d["attn_skipped"], d["mlp_skipped"]] * skips
        row += [d.get("attn_mean_skip"), d.get("mlp_mean_skip")] * scores
        rows.append(row)
    return markdown_table(header, rows)


def findings_markdown(f: dict[str, Any]) -> str:
    """A "## Findings" section: short sentences from the computed numbers and the depth-profile table."""
    sentences = _sensitivity(f) + _extremes(f) + _linear(f) + _choice(f) + _depths(f)
    parts = ["## Findings", "",
             "Scores: increase of validation loss (nats) when only that sublayer is replaced by the candidate.", ""]
    parts += [f"- {s}" for s in sentences]
    if f["depth"]:
        parts += ["", "Depth profile of the chosen model (blocks split into thirds):", "", _depth_table(f)]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------------- chart


def sensitivity_chart(table: dict[str, Any], path: str | Path, title: str = "") -> str:
    """Skip score per block for attention and MLP (solid), linear score where the pool has it (dashed);
    symlog y axis when the scores span more than two decades. Written atomically; returns str(path)."""
    from matplotlib.figure import Figure

    ops = [s["op"] for s in table["pool"]]
    parsed = [_parse(name, i) for i, name in enumerate(table["sublayers"])]
    n_blocks = max((b for b, _ in parsed), default=-1) + 1
    series = []  # (label, kind, linestyle, blocks, scores)
    for op, name, style in (("identity", "skip", "-"), ("linear", "linear", "--")):
        if op not in ops:
            continue
        col = ops.index(op)
        for kind in KINDS:
            points = [(b, s[col]) for (b, k), s in zip(parsed, table["scores"]) if k == kind and _finite(s[col])]
            if points:
                series.append((f"{name}, {KIND_NAMES[kind]}", kind, style, *zip(*points)))

    fig = Figure(figsize=(max(6.0, 0.25 * n_blocks + 3), 4))
    ax = fig.subplots()
    for label, kind, style, xs, ys in series:
        ax.plot(xs, ys, linestyle=style, marker=KIND_MARKERS[kind], markersize=4, color=KIND_COLORS[kind], label=label,
                markerfacecolor="none" if style == "--" else KIND_COLORS[kind])
    values = [abs(y) for *_, ys in series for y in ys if y != 0]
    if values and max(values) / min(values) > 100:  # scores span decades
        ax.set_yscale("symlog", linthresh=min(values))
    if series:
        ax.axhline(0.0, color="gray", linewidth=0.5)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.text(0.5, 0.5, "no skip or linear scores in this pool", ha="center", va="center", transform=ax.transAxes)
    step = max(1, math.ceil(n_blocks / 30))
    ax.set_xticks(list(range(0, max(n_blocks, 1), step)))
    ax.set_xlabel("block")
    ax.set_ylabel("increase of validation loss, nats")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)

