import subprocess
import sys
import textwrap

import pytest
import torch

from unast_core.assemble import build_student, describe, layers_from_choice
from unast_core.export import export_checkpoint
from unast_core.teacher import byte_tokenizer

CHOICE = [1, 0, 0, 1, 0, 0]  # skip block 0's attention and block 1's MLP


def _ids(vocab=97, seed=0):
    return torch.randint(1, vocab, (1, 7), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_student_generate_with_cache_matches_no_cache(family_model):
    student = build_student(family_model, layers_from_choice(CHOICE, ["teacher", "identity"]))
    ids = _ids()
    cached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 13)
    assert torch.equal(cached, uncached)


def test_student_parameters_drop_with_skips(family_model):
    student = build_student(family_model, layers_from_choice(CHOICE, ["teacher", "identity"]))
    n_teacher = sum(p.numel() for p in family_model.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    assert n_student < n_teacher


def test_describe():
    assert describe(layers_from_choice(CHOICE, ["teacher", "identity"])) == "-T T- TT"


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_export_reloads_without_unast_and_generates(tmp_path, model_type):
    from tests.conftest import tiny_model

    teacher = tiny_model(model_type)
    student = build_student(teacher, layers_from_choice(CHOICE, ["teacher", "identity"]))
    tokenizer = byte_tokenizer()
    out = export_checkpoint(student, tokenizer, tmp_path / "ckpt", card="# card\n", results={"ok": 1})
    ids = _ids()
    with torch.no_grad():
        expected = student(ids).logits[0, -1, :5].tolist()
    # A fresh interpreter that cannot import unast_core: the checkpoint carries its own modeling code.
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules['unast_core'] = None
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        ids = torch.tensor([{ids[0].tolist()}])
        with torch.no_grad():
            print(m(ids).logits[0, -1, :5].tolist())
            print(m.generate(ids, max_new_tokens=4, do_sample=False).shape[1])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logits_line, length_line = proc.stdout.strip().splitlines()[-2:]
    assert torch.allclose(torch.tensor(eval(logits_line)), torch.tensor(expected), atol=1e-5)
    assert int(length_line) == 11
