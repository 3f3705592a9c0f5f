"""Human-readable outputs: results.json, the model card and the console summary (pure functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unast_core.config import RunConfig
from unast_core.model.modeling_unast import SUBLAYER_KINDS
from unast_core.model.ops import OpSpec
from unast_core.records import Choice, DistillReport, Evaluation, Prepared, Trained


def _op(spec: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "op")
    return spec["op"] + (f" ({extra})" if extra else "")


def architecture_table(layers: list[dict[str, dict[str, Any]]]) -> str:
    rows = ["| block | attention | MLP |", "|---:|---|---|"]
    rows += [f"| {b} | {_op(layer['attn'])} | {_op(layer['mlp'])} |" for b, layer in enumerate(layers)]
    return "\n".join(rows)


def model_card(results: dict[str, Any]) -> str:
    t, s = results["teacher"], results["student"]
    budget = ", ".join(f"{k} <= {v:g}" for k, v in results["budget"].items())
    kept = sum(layer[k]["op"] == "teacher" for layer in results["layers"] for k in SUBLAYER_KINDS)
    regime = results.get("regime", {})
    method = results.get("method", "unast")
    how = ("UNAST (layer-wise replacement + ILP search" if method == "unast"
           else f"the `{method}` baseline of UNAST (for comparison")
    findings = "\n".join(_findings_section(results)).strip()
    return f"""---
library_name: transformers
tags: [unast, compressed, nas]
---
# {results.get('name', 'UNAST student')}

Compressed from `{results.get('teacher_source', '?')}` by {how},
budget {budget}, pool {results.get('pool')}). {kept} of {2 * len(results['layers'])} sublayers are the teacher's.

Load it (the modeling code ships with the checkpoint):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)
```

## Measured results

| | teacher | student | ratio |
|---|---:|---:|---:|
| test perplexity (in-domain) | {t['test_ppl']:.3f} | {s['test_ppl']:.3f} | {s['test_ppl'] / t['test_ppl']:.3f} |
{_heldout_row(results)}| parameters | {t['params']:,} | {s['params']:,} | {s['param_ratio']:.3f} |
| {regime.get('kind', 'prefill')} latency, s | {t['latency_s']:.4f} | {s['latency_s']:.4f} | {s['latency_ratio']:.3f} |

KL(teacher || student) on the test split: {s['kl_to_teacher']:.4f} nats/token over {results.get('test_tokens', '?')} tokens{_heldout_kl(results)}.
Latency timed in {results.get('deploy_dtype', 'float32')} (the weights are saved in it); trained in {results.get('compute_dtype', 'float32')}.
Latency: {regime.get('device', '?')}, {regime.get('kind', 'prefill')} batch {regime.get('batch_size', '?')} x {regime.get('seq_len', '?')}
tokens (prefill: the prompt, last-token logits; decode: one token with that much context in the KV cache),
median of interleaved repeats against the teacher in the same process, with the student's sublayers installed
in the teacher and all weights side by side in memory{_standalone(s)}.

## Architecture

`{results.get('summary', '')}` (per block: attention then MLP; T teacher, - skipped, L linear, a / m downsized
attention / MLP)

{architecture_table(results['layers'])}

{_figure_links(results)}{findings + chr(10) * 2 if findings else ""}{lm_eval_section(results["lm_eval"]) if results.get("lm_eval") else ""}## Sample (greedy)

{results.get('sample', '')!r}
"""


def lm_eval_section(scores: dict[str, Any]) -> str:
    """`unast eval`'s scores: one row per task and metric, teacher next to student."""
    rows = []
    for task, metrics in scores["student"].items():
        for metric, value in metrics.items():
            if "stderr" in metric:
                continue
            teacher = scores.get("teacher", {}).get(task, {}).get(metric)
            rows.append(f"| {task} | {metric} | {'' if teacher is None else f'{teacher:.4f}'} | {value:.4f} |")
    limit = f", first {scores['limit']} documents per task" if scores.get("limit") else ""
    return ("## lm-evaluation-harness\n\n"
            f"`unast eval` (lm-eval's HFLM on the fp32 models{limit}):\n\n"
            "| task | metric | teacher | student |\n|---|---|---:|---:|\n" + "\n".join(rows) + "\n\n")


def _heldout_row(results: dict[str, Any]) -> str:
    t, s = results["teacher"], results["student"]
    if "heldout_ppl" not in s:
        return ""
    return (f"| held-out perplexity ({(results.get('heldout') or {}).get('source', '?')}) | {t['heldout_ppl']:.3f} | "
            f"{s['heldout_ppl']:.3f} | {s['heldout_ppl'] / t['heldout_ppl']:.3f} |\n")


def _heldout_kl(results: dict[str, Any]) -> str:
    s = results["student"]
    if "heldout_kl" not in s:
        return "; no held-out set (data.heldout is None)"
    return (f"; on the held-out set, a domain no stage trained on: {s['heldout_kl']:.4f} nats/token over "
            f"{(results.get('heldout') or {}).get('tokens', '?')} tokens")


def _prediction(results: dict[str, Any]) -> str:
    predicted, error = results.get("predicted_ratio", {}).get("latency"), results.get("latency_prediction_error")
    table = (results.get("table_ratio") or {}).get("latency")
    raw = "" if table is None or abs(table - predicted) < 5e-4 else f", table {table:.3f}"
    return "" if predicted is None or error is None else f"; predicted {predicted:.3f}{raw} ({100 * error:+.1f}%)"


def _standalone(student: dict[str, Any]) -> str:
    ratio = student.get("standalone_latency_ratio")
    return f" (the exported model timed as a separate object: {ratio:.3f})" if ratio is not None else ""


def _figure_links(results: dict[str, Any]) -> str:
    figures = results.get("figures") or {}
    if not figures:
        return ""
    return "## Figures\n\n" + "\n".join(f"![{name}]({path})" for name, path in figures.items()) + "\n\n"


def _compression_line(c: dict[str, Any]) -> str:
    """Post-training compression (Section 5.3): what, the Appendix D size and the bytes on disk."""
    what = f"SparseGPT {c['sparsity']}" if c["method"] == "sparsegpt" else \
        f"{c['method'].upper()} {c['bits']}-bit" + (f", groups of {c['group_size']}" if c.get("group_size") else "")
    return (f"compression     {what} on {c['layers']} body linears: size {c['app_d_bytes'] / 2**30:.4f} GB "
            f"(Appendix D, ratio {c['size_ratio']:.3f}), {c['disk_bytes'] / 2**30:.4f} GB on disk; no int4 / sparse "
            "kernel here, so no speed-up from it")


def console_summary(results: dict[str, Any]) -> str:
    t, s = results["teacher"], results["student"]
    lines = [
        f"method          {results.get('method', 'unast')}",
        f"budget          {', '.join(f'{k}={v:g}' for k, v in results['budget'].items())}",
        f"architecture    {results.get('summary', '')}",
        f"test perplexity teacher {t['test_ppl']:.3f}  student {s['test_ppl']:.3f} (in-domain, ratio "
        f"{s['test_ppl'] / t['test_ppl']:.3f})",
        *([f"held-out ppl    teacher {t['heldout_ppl']:.3f}  student {s['heldout_ppl']:.3f} (ratio "
           f"{s['heldout_ppl'] / t['heldout_ppl']:.3f}, KL {s['heldout_kl']:.4f}; "
           f"{(results.get('heldout') or {}).get('source', '?')})"] if "heldout_ppl" in s else []),
        f"latency ratio   {s['latency_ratio']:.3f} (measured, {results['regime'].get('kind', 'prefill')} "
        f"{results['regime']['batch_size']}x{results['regime']['seq_len']}){_prediction(results)}"
        f"{'; separate object ' + format(s['standalone_latency_ratio'], '.3f') if s.get('standalone_latency_ratio') else ''}",
        f"param ratio     {s['param_ratio']:.3f} ({s['params']:,} / {t['params']:,})",
        f"KL to teacher   {s['kl_to_teacher']:.4f} nats/token",
        f"export          {results['output']}",
    ]
    if results.get("compression"):
        lines.insert(-1, _compression_line(results["compression"]))
    if "size" in (results.get("predicted_ratio") or {}):  # exact, like params (Appendix D bytes)
        lines.insert(-1, f"size ratio      {results['predicted_ratio']['size']:.3f} (Appendix D stored bytes: "
                         "16-bit weights, compressed teacher sublayers at their bits / non-zeros)")
    if results.get("mlflow"):
        m = results["mlflow"]
        where = "" if m["tracking_uri"].startswith(("http://", "https://")) else \
            f" (mlflow ui --backend-store-uri {m['tracking_uri']})"  # a server serves its own UI
        lines.append(f"mlflow          run {m['run_id']} in {m['tracking_uri']}{where}")
    lines.append("wall time       " + ", ".join(f"{k} {v:.1f}s" for k, v in results["wall_s"].items()))
    if any(results.get("peak_rss_mb", {}).values()):
        lines.append("peak RSS        " + ", ".join(f"{k} {v / 1024:.1f}G" for k, v in results["peak_rss_mb"].items() if v))
    return "\n".join(lines)


def full_report(results: dict[str, Any]) -> str:
    """`unast report DIR`: the summary, the architecture and the distillation table with the figures."""
    parts = [console_summary(results), "", "## Architecture", "", architecture_table(results["layers"])]
    distill = results.get("distill")
    if distill:
        parts += ["", "## Layer-wise distillation (normalized MSE on held-out tokens; skipping scores 1)", "",
                  distill["table1"]]
        if distill.get("failed"):
            parts += ["", "failed candidates: " + "; ".join(distill["failed"])]
    figures = results.get("figures") or {}
    if figures:
        parts += ["", "## Figures", ""] + [f"- {name}: {path}" for name, path in figures.items()]
    parts += _findings_section(results)
    return "\n".join(parts)


def _findings_section(results: dict[str, Any]) -> list[str]:
    """The run's findings when its score table (`scores_path`) is there; nothing when it is absent or unreadable."""
    from unast_core.report.findings import findings_for, findings_markdown

    try:
        found = findings_for(results)
    except (KeyError, TypeError, ValueError) as e:  # a table that does not match the architecture: say so, don't fail
        return ["", "## Findings", "", f"not computed: {type(e).__name__}: {e}"]
    parts = [] if found is None else ["", findings_markdown(found)]
    from unast_core.report.tolerance import tolerance_for, tolerance_markdown

    tolerated = tolerance_for(results)
    return parts + (["", tolerance_markdown(tolerated)] if tolerated and tolerated["candidates"] else [])


def _positions(n_blocks: int) -> dict[str, int]:
    return {"head": 0, "middle": n_blocks // 2, "tail": n_blocks - 1}


def distill_summary(rows: list[dict[str, Any]], sublayers: list[str]) -> dict[str, Any]:
    """From the distillation results: per-candidate local error per sublayer (the paper's Figure 4) and a
    table like its Table 1 (error after distillation, at init, of skipping) at a head, middle and tail block."""
    from unast_core.report.figures import markdown_table

    errors: dict[str, list[float | None]] = {"identity": [1.0] * len(sublayers)}
    by_key = {}
    for row in rows:
        errors.setdefault(row["candidate"], [None] * len(sublayers))[row["index"]] = row.get("nmse")
        by_key[(row["index"], row["candidate"])] = row
    n_blocks = len(sublayers) // 2
    table = []
    for kind in ("attn", "mlp"):
        for where, block in _positions(n_blocks).items():
            index = 2 * block + (kind == "mlp")
            for (i, cand), row in sorted(by_key.items()):
                if i == index:
                    table.append([f"{cand}, {where} ({sublayers[index]})", row.get("nmse"), row.get("nmse_init"),
                                  1.0, row.get("steps"), row.get("status")])
    header = ["candidate, position", "NMSE distilled", "NMSE init", "NMSE skip", "steps", "status"]
    failed = [f"{r['sublayer']}/{r['candidate']}: {r.get('error')}" for r in rows if r.get("status") != "ok"]
    return {"errors": errors, "table1": markdown_table(header, table), "failed": failed,
            "trained": len(rows), "reused": sum(bool(r.get("reused")) for r in rows)}


def student_results(prep: Prepared, config: RunConfig, budget: dict[str, float], choice: Choice, final: Trained,
                    measured: Evaluation, distilled: DistillReport | None, figures: dict[str, str],
                    scores_path: str | None, out_dir: str, run_info: dict[str, Any]) -> dict[str, Any]:
    """results.json of one model (records in, plain dict out): what was built, how it was chosen, how it
    measures against the teacher. `run_info` holds the tracking ids and the wall time per stage."""
    arch = choice.arch
    predicted = arch.predicted_ratio or {}
    student = measured.student
    return {
        "name": f"{'UNAST' if config.method == 'unast' else config.method} student of {prep.source}",
        "method": config.method, "teacher_source": prep.source, "preset": config.preset, "budget": budget,
        "pool": [OpSpec.of(spec).name for spec in prep.pool],
        "teacher": measured.teacher, "student": student, "regime": measured.regime, "test_tokens": measured.test_tokens,
        "heldout": None if not measured.heldout_tokens else {"source": config.data.heldout,
                                                             "tokens": measured.heldout_tokens},
        "data": {"source": config.data.source, "generated_fraction": config.data.generated_fraction},
        "compute_dtype": prep.compute_dtype, "deploy_dtype": prep.deploy_dtype,
        "distill": None if distilled is None else {"errors": distilled.errors, "table1": distilled.table1,
                                                   "failed": distilled.failed, "trained": distilled.trained,
                                                   "reused": distilled.reused_count},
        "figures": {k: f"figures/{Path(v).name}" for k, v in figures.items()},
        "summary": arch.summary, "layers": arch.layers, "predicted_ratio": predicted, "table_ratio": arch.table_ratio,
        "latency_prediction_error": student["latency_ratio"] / predicted["latency"] - 1 if "latency" in predicted else None,
        **choice.results, **({"scores_path": scores_path} if scores_path else {}),
        "finetune": {"val_loss_before": final.val_loss_before, "val_loss": final.val_loss, "steps": final.steps,
                     "tokens": final.tokens, "dtype": final.dtype},
        "output": str(Path(out_dir).resolve()), "run_dir": prep.run_dir, **run_info,
    }
