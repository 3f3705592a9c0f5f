"""The chunked losses equal the full-logits ones (value and gradients), and hold no full-vocabulary
logits for backward: body/head split per family, training loss, evaluation helpers."""

import pytest
import torch

from tests.conftest import tiny_model
from unast_core.config import TrainConfig
from unast_core.errors import UnastError
from unast_core.model.assemble import build_student, layers_from_choice
from unast_core.train import losses
from unast_core.train.finetune import distill_loss, finetune
from unast_core.train.losses import (
    LOGITS_PER_CHUNK,
    body_and_head,
    chunked_distill_loss,
    compare_to_teacher,
    kd_terms,
    kl_to_teacher,
    lm_loss,
    lm_loss_terms,
)

VOCAB = 97  # tests/conftest.py's tiny models


def _ids(rows=2, length=11, seed=0):
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def _student(teacher):
    """A student unlike its teacher: one block's attention skipped, another's MLP made linear (seeded)."""
    torch.manual_seed(0)
    return build_student(teacher, layers_from_choice([1, 0, 0, 2, 0, 0], [{"op": "teacher"}, {"op": "identity"},
                                                                          {"op": "linear"}])).train()


def test_body_and_head_of_llama_gpt2_and_a_student():
    llama, gpt2 = tiny_model("llama"), tiny_model("gpt2")
    assert body_and_head(llama).body is llama.model and body_and_head(llama).head is llama.lm_head
    assert body_and_head(gpt2).body is gpt2.transformer and body_and_head(gpt2).head is gpt2.lm_head
    student = _student(llama)
    split = body_and_head(student)
    assert split.body is student.student.model and split.head is student.student.lm_head and split.vocab == VOCAB
    with pytest.raises(UnastError, match="no separate LM head"):
        body_and_head(llama.model)


def test_split_gives_the_models_own_logits(family_model):
    split = body_and_head(family_model)
    ids = _ids()
    with torch.no_grad():
        assert torch.allclose(split.logits(split.hidden(ids)), family_model(ids, use_cache=False).logits, atol=1e-6)
    if family_model.config.model_type == "gemma2":
        assert split.softcap == family_model.config.final_logit_softcapping  # Gemma 2 caps its final logits


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt2"])
@pytest.mark.parametrize("cfg", [TrainConfig(temperature=2.0, kd_weight=0.7, lm_weight=1.3), TrainConfig(kd_weight=0),
                                 TrainConfig(lm_weight=0)])
@pytest.mark.parametrize("chunk", [5, None])  # uneven chunks; the default size (one chunk here)
def test_chunked_loss_and_gradients_equal_the_full_logits_loss(model_type, cfg, chunk):
    teacher = tiny_model(model_type).requires_grad_(False)
    ids = _ids()
    results = []
    for chunked in (True, False):
        student = _student(teacher)
        loss = (chunked_distill_loss(student, teacher, ids, cfg.lm_weight, cfg.kd_weight, cfg.temperature, chunk)
                if chunked else distill_loss(student, teacher, ids, cfg, full_logits=True))
        loss.backward()
        results.append((loss.item(), _grads(student)))
    (value, grads), (ref_value, ref_grads) = results
    assert value == pytest.approx(ref_value, rel=1e-5) and value > 0
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max().item()
        assert (grad - ref_grads[name]).abs().max().item() <= 1e-5 * scale + 1e-9, name


def test_distill_loss_uses_the_chunked_form():
    teacher = tiny_model("llama").requires_grad_(False)
    ids, cfg = _ids(), TrainConfig(temperature=1.5)
    assert distill_loss(_student(teacher), teacher, ids, cfg).item() == pytest.approx(
        distill_loss(_student(teacher), teacher, ids, cfg, full_logits=True).item(), rel=1e-5)


def _vocab_wide_saved(fn) -> int:
    """Elements of the largest vocabulary-wide tensor autograd keeps for backward while `fn` runs."""
    sizes = [0]

    def pack(x):
        sizes.append(x.numel() if x.shape[-1:] == (VOCAB,) else 0)
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = fn()
    loss.backward()
    return max(sizes)


def test_no_full_logits_are_held_for_backward():
    teacher = tiny_model("llama").requires_grad_(False)
    ids, cfg = _ids(2, 40), TrainConfig()
    assert _vocab_wide_saved(lambda: distill_loss(_student(teacher), teacher, ids, cfg, full_logits=True)) >= 80 * VOCAB
    # each chunk is checkpointed: its logits are recomputed in backward, none are kept from the forward
    assert _vocab_wide_saved(lambda: chunked_distill_loss(_student(teacher), teacher, ids, 1.0, 1.0, chunk=8)) == 0


def test_chunk_size_is_256_tokens_of_a_262k_vocabulary():
    assert LOGITS_PER_CHUNK // 262144 == 256 and LOGITS_PER_CHUNK * 4 == 256 * 2 ** 20


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(losses, "LOGITS_PER_CHUNK", 7 * VOCAB)  # 7-token chunks: several per batch


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_evaluation_helpers_equal_their_full_logits_form(model_type, small_chunks):
    teacher = tiny_model(model_type)
    student = _student(teacher).eval()
    tokens = _ids(5, 12, seed=3)
    with torch.no_grad():
        logits_s, logits_t = student(tokens, use_cache=False).logits, teacher(tokens, use_cache=False).logits
    predicted = 5 * 11
    both = compare_to_teacher(student, teacher, tokens, 2)
    assert both["teacher_loss"] == pytest.approx(lm_loss_terms(logits_t, tokens).item() / predicted, rel=1e-5)
    assert both["student_loss"] == pytest.approx(lm_loss_terms(logits_s, tokens).item() / predicted, rel=1e-5)
    assert both["kl"] == pytest.approx(kd_terms(logits_s, logits_t).item() / tokens.numel(), rel=1e-5) and both["kl"] > 0
    assert kl_to_teacher(student, teacher, tokens, 3) == pytest.approx(both["kl"], rel=1e-5)
    assert lm_loss(student, tokens, 2) == pytest.approx(both["student_loss"], rel=1e-5)
    # a caller's own forward (scoring runs from a stored state) still gets the full-logits form
    assert lm_loss(student, tokens, 2, forward=lambda ids, _s: student(ids).logits) == pytest.approx(
        both["student_loss"], rel=1e-5)


def test_finetune_trains_through_the_chunked_loss(small_chunks):
    teacher = tiny_model("llama").requires_grad_(False)
    student = _student(teacher)
    train, val = _ids(8, 16, seed=1), _ids(4, 16, seed=2)
    result = finetune(student, teacher, train, val, TrainConfig(steps=6, batch_size=4, lr_max=3e-3))
    assert result["val_loss"] < result["val_loss_before"]
    assert all(torch.isfinite(torch.tensor(c["loss"])) for c in result["curve"])
