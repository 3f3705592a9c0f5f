import pytest
import torch

from unast_core.model.assemble import build_student, describe, layers_from_choice

SKIP_POOL = [{"op": "teacher"}, {"op": "identity"}]
CHOICE = [1, 0, 0, 1, 0, 0]  # skip block 0's attention and block 1's MLP


def _ids(vocab=97, seed=0):
    return torch.randint(1, vocab, (1, 7), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_student_generate_with_cache_matches_no_cache(family_model):
    student = build_student(family_model, layers_from_choice(CHOICE, SKIP_POOL))
    ids = _ids()
    cached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 13)
    assert torch.equal(cached, uncached)


def test_student_parameters_drop_with_skips(family_model):
    student = build_student(family_model, layers_from_choice(CHOICE, SKIP_POOL))
    n_teacher = sum(p.numel() for p in family_model.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    assert n_student < n_teacher


def test_describe():
    assert describe(layers_from_choice(CHOICE, SKIP_POOL)) == "-T T- TT"


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_export_reloads_without_unast_and_generates(tmp_path, model_type):
    from tests.conftest import assert_export_reloads, tiny_model

    teacher = tiny_model(model_type)
    student = build_student(teacher, layers_from_choice(CHOICE, SKIP_POOL))
    assert_export_reloads(student, tmp_path)


def test_bf16_export_reloads_in_one_dtype(tmp_path):
    """A student saved in bf16 from a teacher whose config names float32 (as a converted GGUF's does): the
    inner model follows that config and the replaced sublayers the default dtype, so without one cast at
    construction the reloaded model mixed fp32 and bf16 layers and failed in its first matmul."""
    from tests.conftest import assert_export_reloads, tiny_model

    teacher = tiny_model("llama")
    teacher.config.dtype = torch.float32
    pool = SKIP_POOL + [{"op": "linear"}]
    student = build_student(teacher, layers_from_choice([2, 1, 0, 2, 0, 0], pool)).to(torch.bfloat16)
    assert_export_reloads(student, tmp_path)
