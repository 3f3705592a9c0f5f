"""`unast eval`: lm-evaluation-harness on a small local task built here (offline), teacher vs student path."""

import json

import pytest
import torch

pytest.importorskip("lm_eval")

from unast_core.evaluate.lm_eval import evaluate_dir, lm_eval_scores  # noqa: E402
from unast_core.model.assemble import build_student  # noqa: E402
from unast_core.model.teacher import tiny_random_teacher  # noqa: E402
from unast_core.report.export import export_checkpoint  # noqa: E402

TASK = """task: unast_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture
def local_task(tmp_path):
    rows = [{"question": f"Item {i}: the colour of the sky is", "choices": ["blue", "green", "loud", f"{i}"],
             "answer": i % 4} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(TASK.format(data=tmp_path / "data.jsonl"))
    return folder


def test_teacher_scores_equal_through_the_student_path(tmp_path, local_task):
    teacher = tiny_random_teacher()
    direct = lm_eval_scores(teacher.model, teacher.tokenizer, ["unast_tiny_choice"], include=local_task, batch_size=4)
    assert set(direct["unast_tiny_choice"]) >= {"acc,none", "acc_norm,none"}
    layers = [{"attn": {"op": "teacher"}, "mlp": {"op": "teacher"}}] * 4
    student = build_student(teacher.model, layers)  # the teacher's own weights, as a UNAST student
    out = export_checkpoint(student, teacher.tokenizer, tmp_path / "ckpt", card="# card\n",
                            results={"teacher_source": "tiny-random-llama"})
    scores = evaluate_dir(out, ["unast_tiny_choice"], include=local_task, batch_size=4, with_teacher=False)
    assert scores["student"] == direct
    saved = json.loads((out / "results.json").read_text())["lm_eval"]
    assert saved["student"] == direct
    assert "| unast_tiny_choice | acc,none |" in (out / "README.md").read_text()
