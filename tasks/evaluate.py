from __future__ import annotations

import math
from pathlib import Path

from prefect import task
from safetensors.torch import load_model

from tasks.common import computing, on_device, run_logger, splits, teacher_for, timing
from unast_core.compress.export import packed_candidates, packed_copy
from unast_core.config import CostConfig, EvalConfig
from unast_core.model.assemble import build_student
from unast_core.records import Evaluation, Exported, Prepared, Trained
from unast_core.report.card import model_card
from unast_core.integrity import recorded_sha256, tree_intact
from unast_core.locks import unit_lock
from unast_core.report.export import export_checkpoint
from unast_core.store import read_json, read_tensors, write_json, write_text
from unast_core.search.latency import latency_vs_teacher, resolve_device, student_latency
from unast_core.train.losses import compare_to_teacher
from unast_core.train.precision import DTYPES, deployed

EXPORT_SOURCE = ".export-source.json"  # which trained weights a stored checkpoint was made from


@task(name="evaluate", tags=["unast-timing"])
def evaluate(prep: Prepared, trained: Trained, cfg: EvalConfig, cost_cfg: CostConfig) -> Evaluation:
    """Stage 8a: perplexity of teacher and student and the KL to the teacher, on the in-domain test split and
    on the held-out set (a domain no stage trained on); the measured latency ratio: the student's modules
    timed in the teacher (`student_latency`, the procedure of the cost table and of the architecture check,
    alone on the host) and, for reference, the separately built student, both in the deployed dtype.
    Quality is measured in fp32 (the trained master weights)."""
    teacher = teacher_for(prep.teacher)
    student = build_student(teacher.model, trained.layers)
    load_model(student, trained.weights)
    data = splits(prep)
    device = resolve_device(cost_cfg.device)
    with on_device(device, teacher.model, student):
        with timing(), deployed(prep.deploy_dtype, teacher.model, student) as (t_model, s_model):
            latency = student_latency(t_model, s_model.student, trained.layers, cost_cfg.regime,
                                      cfg.latency_warmup, cfg.latency_repeats)
            standalone = latency_vs_teacher(s_model, t_model, cost_cfg.regime, cfg.latency_warmup,
                                            cfg.latency_repeats)
        with computing():
            quality = {split: compare_to_teacher(student, teacher.model, data[split], cfg.batch_size)
                       for split in ("test", "heldout") if split in data}
    n_student = sum(p.numel() for p in student.parameters())
    held = quality.get("heldout")
    return Evaluation(
        teacher={"test_ppl": math.exp(quality["test"]["teacher_loss"]), "params": prep.teacher_params,
                 "latency_s": latency["teacher_s"],
                 **({"heldout_ppl": math.exp(held["teacher_loss"])} if held else {})},
        student={"test_ppl": math.exp(quality["test"]["student_loss"]), "params": n_student,
                 "latency_ratio": latency["latency_ratio"], "param_ratio": n_student / prep.teacher_params,
                 "kl_to_teacher": quality["test"]["kl"], "latency_s": latency["student_s"],
                 "standalone_latency_ratio": standalone["latency_ratio"],
                 **({"heldout_ppl": math.exp(held["student_loss"]), "heldout_kl": held["kl"]} if held else {})},
        regime={"device": device, "dtype": prep.deploy_dtype, **cost_cfg.regime.model_dump()},
        test_tokens=data["test"].numel(), heldout_tokens=data["heldout"].numel() if held else 0)


# The exported form's version, part of the stamp that lets an intact checkpoint be reused: bump it when the
# form changes (2: compressed-teacher candidates stored packed, 2026-12-05).
EXPORT_FORMAT = 2


@task(name="export")
def export(prep: Prepared, trained: Trained, results: dict, out_dir: str, generate_tokens: int) -> Exported:
    """Stage 8b: HF checkpoint (auto_map + modeling code), tokenizer, model card, results.json. A checkpoint
    already in `out_dir`, intact and made from the same trained weights, is reused (its card and results are
    rewritten)."""
    with unit_lock(out_dir):
        stamp = Path(out_dir) / EXPORT_SOURCE
        source = {"weights": trained.weights, "sha256": recorded_sha256(Path(trained.weights)),
                  "generate_tokens": generate_tokens, "dtype": prep.deploy_dtype, "compression": trained.compression,
                  "format": EXPORT_FORMAT}
        if stamp.exists() and tree_intact(out_dir) and read_json(stamp) == source:  # a corrupt file: warned, redone
            sample = read_json(Path(out_dir) / "results.json").get("sample", "")
            write_text(Path(out_dir) / "README.md", model_card({**results, "sample": sample}))
            write_json(Path(out_dir) / "results.json", {**results, "sample": sample})
            return Exported(dir=out_dir, sample=sample, reused=True)
        teacher = teacher_for(prep.teacher)
        student = build_student(teacher.model, trained.layers)
        load_model(student, trained.weights)
        sample = ""
        if generate_tokens:
            prompt = teacher.tokenizer("The Python language", return_tensors="pt").input_ids
            ids = student.generate(prompt, max_new_tokens=generate_tokens, do_sample=False)
            sample = teacher.tokenizer.decode(ids[0], skip_special_tokens=True)
        if trained.compression:  # body linears packed, everything else 16-bit (Appendix D)
            student = packed_copy(student, read_tensors(Path(trained.compression["packed"])),
                                  {k: v for k, v in trained.compression.items() if k != "packed"})
        else:
            packed = _pool_packed(student, trained.layers)
            student = packed if packed is not None else student.to(DTYPES[prep.deploy_dtype])
        export_checkpoint(student, teacher.tokenizer, Path(out_dir), model_card({**results, "sample": sample}),
                          {**results, "sample": sample})
        write_json(stamp, source)
        return Exported(dir=out_dir, sample=sample)


def _pool_packed(student, layers):
    """The student with its compressed-teacher candidates (Appendix H) stored packed and the rest 16-bit, as
    Appendix D sizes it; None when it has none (it is then saved as deployed: bf16 halves the checkpoint)."""
    packed, meta, dense = packed_candidates(student, layers)
    if dense:
        run_logger().warning(f"{len(dense)} compressed linears are off their stored grid and are exported dense: "
                             f"{', '.join(dense[:4])}")
    return packed_copy(student, packed, {"method": "pool.compressed", "layers": meta}) if meta else None
