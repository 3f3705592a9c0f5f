from __future__ import annotations

import math
from pathlib import Path

from prefect import task
from safetensors.torch import load_model

from tasks.common import on_device, splits, teacher_for
from tasks.cost import resolve_device
from unast_core.assemble import build_student
from unast_core.config import CostConfig, EvalConfig, TeacherConfig
from unast_core.cost import student_latency
from unast_core.evaluate import compare_to_teacher, latency_vs_teacher
from unast_core.export import export_checkpoint
from unast_core.report import model_card


@task(name="evaluate", tags=["unast-compute"])
def evaluate(prep: dict, teacher_cfg: TeacherConfig, trained: dict, cfg: EvalConfig, cost_cfg: CostConfig) -> dict:
    """Stage 8a: test perplexity of teacher and student, KL to the teacher, measured latency ratio: the
    student's modules timed in the teacher (`student_latency`, the procedure of the cost table and of the
    architecture check) and, for reference, the separately built student timed against the teacher."""
    teacher = teacher_for(teacher_cfg)
    student = build_student(teacher.model, trained["layers"])
    load_model(student, trained["weights"])
    test = splits(prep)["test"]
    device = resolve_device(cost_cfg.device)
    with on_device(device, teacher.model, student):
        latency = student_latency(teacher.model, student.student, trained["layers"], cost_cfg.regime,
                                  cfg.latency_warmup, cfg.latency_repeats)
        standalone = latency_vs_teacher(student, teacher.model, cost_cfg.regime, cfg.latency_warmup, cfg.latency_repeats)
        both = compare_to_teacher(student, teacher.model, test, cfg.batch_size)
    teacher_ppl, student_ppl, kl = math.exp(both["teacher_loss"]), math.exp(both["student_loss"]), both["kl"]
    n_student = sum(p.numel() for p in student.parameters())
    return {
        "teacher": {"test_ppl": teacher_ppl, "params": prep["teacher_params"], "latency_s": latency["teacher_s"]},
        "student": {"test_ppl": student_ppl, "params": n_student, "latency_ratio": latency["latency_ratio"],
                    "param_ratio": n_student / prep["teacher_params"], "kl_to_teacher": kl,
                    "latency_s": latency["student_s"], "standalone_latency_ratio": standalone["latency_ratio"]},
        "regime": {"device": device, **cost_cfg.regime.model_dump()},
        "test_tokens": test.numel(),
    }


@task(name="export")
def export(prep: dict, teacher_cfg: TeacherConfig, trained: dict, results: dict, out_dir: str, generate_tokens: int) -> dict:
    """Stage 8b: HF checkpoint (auto_map + modeling code), tokenizer, model card, results.json."""
    teacher = teacher_for(teacher_cfg)
    student = build_student(teacher.model, trained["layers"])
    load_model(student, trained["weights"])
    sample = ""
    if generate_tokens:
        prompt = teacher.tokenizer("The Python language", return_tensors="pt").input_ids
        ids = student.generate(prompt, max_new_tokens=generate_tokens, do_sample=False)
        sample = teacher.tokenizer.decode(ids[0], skip_special_tokens=True)
    results = {**results, "sample": sample}
    export_checkpoint(student, teacher.tokenizer, Path(out_dir), model_card(results), results)
    return {"dir": out_dir, "sample": sample}
