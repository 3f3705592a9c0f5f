"""Human-readable outputs: the model card and the console summary. Pure functions of a results dict."""

from __future__ import annotations

from typing import Any

from unast_core.modeling_unast import SUBLAYER_KINDS


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
    return f"""---
library_name: transformers
tags: [unast, compressed, nas]
---
# {results.get('name', 'UNAST student')}

Compressed from `{results.get('teacher_source', '?')}` by UNAST (layer-wise replacement + ILP search,
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
| test perplexity | {t['test_ppl']:.3f} | {s['test_ppl']:.3f} | {s['test_ppl'] / t['test_ppl']:.3f} |
| parameters | {t['params']:,} | {s['params']:,} | {s['param_ratio']:.3f} |
| prefill latency, s | {t['latency_s']:.4f} | {s['latency_s']:.4f} | {s['latency_ratio']:.3f} |

KL(teacher || student) on the test split: {s['kl_to_teacher']:.4f} nats/token over {results.get('test_tokens', '?')} tokens.
Latency: {regime.get('device', '?')}, prefill batch {regime.get('batch_size', '?')} x {regime.get('seq_len', '?')} tokens,
last-token logits, median of interleaved repeats against the teacher in the same process.

## Architecture

`{results.get('summary', '')}` (per block: attention then MLP; T = teacher, - = skipped)

{architecture_table(results['layers'])}

## Sample (greedy)

{results.get('sample', '')!r}
"""


def console_summary(results: dict[str, Any]) -> str:
    t, s = results["teacher"], results["student"]
    lines = [
        f"budget          {', '.join(f'{k}={v:g}' for k, v in results['budget'].items())}",
        f"architecture    {results.get('summary', '')}",
        f"test perplexity teacher {t['test_ppl']:.3f}  student {s['test_ppl']:.3f}",
        f"latency ratio   {s['latency_ratio']:.3f} (measured, prefill {results['regime']['batch_size']}x{results['regime']['seq_len']})",
        f"param ratio     {s['param_ratio']:.3f} ({s['params']:,} / {t['params']:,})",
        f"KL to teacher   {s['kl_to_teacher']:.4f} nats/token",
        f"export          {results['output']}",
    ]
    if results.get("mlflow"):
        m = results["mlflow"]
        lines.append(f"mlflow          run {m['run_id']} in {m['tracking_uri']} (mlflow ui --backend-store-uri {m['tracking_uri']})")
    lines.append("wall time       " + ", ".join(f"{k} {v:.1f}s" for k, v in results["wall_s"].items()))
    return "\n".join(lines)
