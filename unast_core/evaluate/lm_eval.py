"""lm-evaluation-harness scores of an in-memory model (its `HFLM` wrapper, with the tokenizer passed in).

Standard task names work where their data is reachable; a task YAML in `include` (for example one that
points `dataset_path: json` at local files) works offline. Scores are returned as
{task: {metric: value}}, numbers only (lm-eval's "acc,none" keys are kept as they are)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unast_core.errors import UnastError


def lm_eval_scores(model: Any, tokenizer: Any, tasks: list[str], include: Path | None = None,
                   batch_size: int = 8, limit: int | None = None, num_fewshot: int | None = None,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UnastError("unast eval needs lm-evaluation-harness: pip install 'unast[eval]'") from None
    # Indexing lm-eval's own ~10k task files takes most of a minute: a local folder that has every task is enough.
    manager = TaskManager(include_path=str(include), include_defaults=False) if include else None
    if manager is None or any(not manager.match_tasks([t]) for t in tasks):
        manager = TaskManager(include_path=str(include) if include else None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        where = f" (nor in {include})" if include else ""
        raise UnastError(f"--tasks: unknown lm-eval task(s) {', '.join(unknown)}{where}; give task names or "
                         f"--include a folder with a task YAML")
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, dtype="auto")
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                  log_samples=False, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed)
    # lm-eval names a score "metric,filter"; other entries (alias, sample_len) are not scores
    return {task: {k: float(v) for k, v in metrics.items() if "," in k and isinstance(v, (int, float))}
            for task, metrics in out["results"].items()}


def teacher_spec(source: str) -> str:
    """The `--model` spec that reloads a run's teacher from results.json's `teacher_source`."""
    from unast_core.model.teacher import SMOLLM2_WHEEL

    return "smollm2-135m" if source.startswith(SMOLLM2_WHEEL) else source


def evaluate_dir(path: Path, tasks: list[str], include: Path | None = None, teacher: str | None = None,
                 with_teacher: bool = True, batch_size: int = 8, limit: int | None = None,
                 num_fewshot: int | None = None) -> dict[str, Any]:
    """lm-eval scores of the exported student in `path` (and of its teacher), written into its results.json
    (`lm_eval`) and model card. The student runs as exported: loaded from `path`, in fp32."""
    from unast_core.report.formats import check_student_dir

    check_student_dir(path)
    from unast_core.model.teacher import load_teacher
    from unast_core.report.card import lm_eval_section, model_card
    from unast_core.report.formats import load_student_dir
    from unast_core.store import atomic_path, read_json, write_json

    path = Path(path)
    results = read_json(path / "results.json") if (path / "results.json").exists() else {}
    model, tokenizer, _ = load_student_dir(path)
    args = dict(include=include, batch_size=batch_size, limit=limit, num_fewshot=num_fewshot)
    scores = {"tasks": tasks, "limit": limit, "num_fewshot": num_fewshot,
              "student": lm_eval_scores(model, tokenizer, tasks, **args)}
    del model
    if with_teacher:
        spec = teacher or teacher_spec(results.get("teacher_source", ""))
        if not spec:
            raise UnastError(f"{path}/results.json names no teacher; pass --teacher MODEL or --no-teacher")
        t = load_teacher(spec)
        scores["teacher"] = lm_eval_scores(t.model, t.tokenizer, tasks, **args)
    results["lm_eval"] = scores
    write_json(path / "results.json", results)
    if "layers" in results and "teacher" in results:  # a full run's results: rebuild its card
        with atomic_path(path / "README.md") as tmp:
            tmp.write_text(model_card(results))
    else:
        with atomic_path(path / "README.md") as tmp:
            old = (path / "README.md").read_text() if (path / "README.md").exists() else ""
            tmp.write_text(old.split("\n## lm-evaluation-harness")[0].rstrip() + "\n\n" + lm_eval_section(scores))
    return scores
