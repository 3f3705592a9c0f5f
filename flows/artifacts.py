"""What a flow run shows in the Prefect UI, and how its MLflow run points back at it.

- MLflow tags on the parent run: the Prefect flow-run id, name and deployment, so an MLflow run leads to
  the flow run that made it.
- Prefect artifacts of the flow run: a markdown link to the MLflow run (`mlflow-run`), and per exported
  model the results table (`results`), the chosen architecture (`architecture`) and, for a budget family,
  the models side by side (`family`). Keys are per budget in a family (`results-latency-0-8`).
"""

from __future__ import annotations

import re
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.tracking import Tracker
from unast_core.report.card import architecture_table


def prefect_tags() -> dict[str, str]:
    """MLflow tags naming this Prefect flow run (empty outside one)."""
    from prefect.runtime import deployment, flow_run

    tags = {"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name,
            "prefect.deployment": deployment.name, "prefect.deployment_id": deployment.id}
    return {key: str(value) for key, value in tags.items() if value}


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(p for p in parts if p).lower())).strip("-")


def link_markdown(tracker: Tracker) -> str:
    url = tracker.run_url()
    where = f"[{tracker.parent_id}]({url})" if url else f"`{tracker.parent_id}`"
    how = "" if url else f"\n\nOpen it with `mlflow ui --backend-store-uri {tracker.uri}`."
    return (f"**MLflow run** {where} in experiment `unast` (experiment id {tracker.experiment_id}) at "
            f"`{tracker.uri}`; one nested run per stage.{how}")


def publish_link(tracker: Tracker) -> None:
    create_markdown_artifact(link_markdown(tracker), key="mlflow-run", description="the MLflow run of this flow run")


def results_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The measured results, one row per quantity: teacher, student and their ratio."""
    t, s = results["teacher"], results["student"]
    rows = [("test perplexity", t["test_ppl"], s["test_ppl"], s["test_ppl"] / t["test_ppl"]),
            ("parameters", t["params"], s["params"], s["param_ratio"]),
            (f"{results['regime'].get('kind', 'prefill')} latency, s", t["latency_s"], s["latency_s"],
             s["latency_ratio"])]
    if "heldout_ppl" in s:
        rows.insert(1, ("held-out perplexity", t["heldout_ppl"], s["heldout_ppl"], s["heldout_ppl"] / t["heldout_ppl"]))
    out = [{"quantity": name, "teacher": _round(a), "student": _round(b), "ratio": _round(r)} for name, a, b, r in rows]
    out.append({"quantity": "KL to teacher, nats/token", "teacher": 0.0, "student": _round(s["kl_to_teacher"]),
                "ratio": None})
    out.append({"quantity": "finetune steps", "teacher": None, "student": results["finetune"]["steps"], "ratio": None})
    return out


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def architecture_markdown(results: dict[str, Any]) -> str:
    budget = ", ".join(f"{k} <= {v:g}" for k, v in results["budget"].items())
    return (f"### {results.get('method', 'unast')}, budget {budget}\n\n{results.get('summary', '')}\n\n"
            f"{architecture_table(results['layers'])}\n\nExported to `{results['output']}`.")


def publish_results(results: dict[str, Any], suffix: str = "") -> None:
    """The results table and the chosen architecture of one exported model."""
    budget = ", ".join(f"{k}={v:g}" for k, v in results["budget"].items())
    create_table_artifact(results_rows(results), key=artifact_key("results", suffix),
                          description=f"UNAST results, budget {budget}: teacher vs student (measured)")
    create_markdown_artifact(architecture_markdown(results), key=artifact_key("architecture", suffix),
                             description=f"the chosen architecture, budget {budget}")


def publish_family(models: list[dict[str, Any]]) -> None:
    """A budget family's models side by side."""
    rows = [{"budget": ", ".join(f"{k}={v:g}" for k, v in m["budget"].items()), "architecture": m.get("summary", ""),
             "test ppl ratio": _round(m["student"]["test_ppl"] / m["teacher"]["test_ppl"]),
             "latency ratio": _round(m["student"]["latency_ratio"]), "param ratio": _round(m["student"]["param_ratio"]),
             "output": m["output"]} for m in models]
    create_table_artifact(rows, key="family", description="the budget family's models side by side")
