"""Compressing a tiny random Llama's body, calibrated on its own activations, and exporting it packed."""

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import TINY_CONFIGS, assert_export_reloads, tiny_model
from unast_core.compress.apply import compress_model, model_bytes
from unast_core.compress.export import packed_copy
from unast_core.config import CompressConfig
from unast_core.errors import UnastError
from unast_core.model.assemble import build_student, layers_from_choice
from unast_core.model.modeling_unast import UnastForCausalLM, family_of, get_blocks
from unast_core.model.teacher import byte_tokenizer
from unast_core.report.export import export_checkpoint

POOL = [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"}]


def _student(choice=(0, 0, 0, 2, 1, 0)):
    return build_student(tiny_model("llama"), layers_from_choice(list(choice), POOL))


def _tokens(n=8, seed=0):
    return torch.randint(1, 97, (n, 16), generator=torch.Generator().manual_seed(seed))


def _blocks(student):
    return get_blocks(student.student, family_of(student.student.config))


@torch.no_grad()
def _logit_error(student, reference, tokens):
    return float((student(tokens).logits - reference).pow(2).mean())


@torch.no_grad()
def test_gptq_model_closer_than_round_to_nearest_and_weights_on_grid():
    tokens, held = _tokens(), _tokens(4, seed=1)
    errors = {}
    for method in ("rtn", "gptq"):
        student = _student()
        reference = student(held).logits
        cfg = CompressConfig(method=method, bits=3, group_size=16)
        packed, meta = compress_model(student, _blocks(student), tokens, cfg, batch=4)
        errors[method] = _logit_error(student, reference, held)
        assert set(meta) == set(packed) and "1.mlp.proj" in meta  # the linear candidate is compressed too
        down = _blocks(student)[0].mlp.down_proj.weight
        assert all(len(torch.unique(down[r, :16])) <= 8 for r in range(down.shape[0]))
    assert 0 < errors["gptq"] < errors["rtn"], errors


@torch.no_grad()
def test_calibration_runs_in_fp32_under_the_runs_bf16_autocast():
    """The stage computes under bf16 autocast; the Hessians must still come from an fp32 forward."""
    cfg = CompressConfig(method="gptq", bits=3, group_size=16)
    weights = []
    for autocast in (False, True):
        student = _student()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            compress_model(student, _blocks(student), _tokens(), cfg, batch=4)
        weights.append(_blocks(student)[2].mlp.down_proj.weight.clone())
    assert torch.equal(*weights)


@torch.no_grad()
def test_sparsegpt_two_four_every_body_linear():
    student = _student()
    _, meta = compress_model(student, _blocks(student), _tokens(), CompressConfig(method="sparsegpt", sparsity="2:4"))
    for name, layer in ((n, m) for n, m in _blocks(student).named_modules() if isinstance(m, torch.nn.Linear)):
        zeros = (layer.weight == 0).reshape(layer.weight.shape[0], -1, 4).sum(2)
        assert torch.equal(zeros, torch.full_like(zeros, 2)), name
        assert meta[name]["nnz"] == layer.weight.numel() // 2
    assert student.student.lm_head.weight.ne(0).all()  # the head is not touched


def test_n_m_pattern_that_does_not_divide_the_width_names_the_field():
    config = AutoConfig.for_model("llama", **{**TINY_CONFIGS["llama"], "intermediate_size": 50})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(UnastError, match=r"invalid config field 'ptq.sparsity'.*multiple of 4; it is 50"):
        compress_model(model, model.model.layers, _tokens(), CompressConfig(method="sparsegpt", sparsity="3:4"))


def _packed(cfg):
    student = _student()
    packed, meta = compress_model(student, _blocks(student), _tokens(), cfg)
    flat = {f"{layer}.{k}": v for layer, part in packed.items() for k, v in part.items()}
    return student, meta, packed_copy(student, flat, {"method": cfg.method, "layers": meta})


def _bytes_match_appendix_d(path, student, meta) -> None:
    """On disk: Appendix D's bytes plus the scales and zeros (quantized) or 1 bit per weight of mask (sparse)."""
    with safe_open(str(path), "pt") as f:
        tensor_bytes = sum(f.get_tensor(k).nbytes for k in f.keys())
    size = model_bytes(student, _blocks(student), meta)
    extra = sum(m["shape"][0] * m["groups"] * 3 if m["kind"] == "quant" else -(-m["shape"][0] * m["shape"][1] // 8)
                for m in meta.values())
    padding = sum(-(m["shape"][0] * m["shape"][1] * m["bits"]) % 8 / 8 for m in meta.values() if m["kind"] == "quant")
    assert tensor_bytes == size["bytes"] + extra + padding


def test_sparse_packed_export_reloads_and_holds_appendix_d_bytes(tmp_path):
    student, meta, stored = _packed(CompressConfig(method="sparsegpt", sparsity=0.5))
    ids = _tokens(2, seed=3)
    with torch.no_grad():  # the packed copy computes what the compressed student computes (the rest is 16-bit)
        assert torch.allclose(stored(ids).logits.float(), student(ids).logits, atol=0.05)
    out = export_checkpoint(stored, byte_tokenizer(), tmp_path / "ckpt", card="# card\n")
    reloaded = UnastForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, stored(ids).logits)
    _bytes_match_appendix_d(out / "model.safetensors", student, meta)


def test_quantized_packed_export_loads_where_unast_is_not_installed(tmp_path):
    student, meta, stored = _packed(CompressConfig(method="gptq", bits=3, group_size=16))
    with torch.no_grad():
        assert torch.allclose(stored(_tokens(2)).logits.float(), student(_tokens(2)).logits, atol=0.05)
    assert_export_reloads(stored, tmp_path)
    _bytes_match_appendix_d(tmp_path / "ckpt" / "model.safetensors", student, meta)


def test_the_algorithms_run_in_fp32_under_autocast():
    """Calibration forwards may run under bf16 autocast; the Hessians (and GPTQ's updates) must not."""
    from unast_core.compress.apply import _exact
    from unast_core.compress.gptq import accumulate_hessian

    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _exact(x):
            exact, _ = accumulate_hessian(x)
        rounded, _ = accumulate_hessian(x)
    assert torch.allclose(exact, 2 * x.T @ x / 64, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rounded, exact, rtol=1e-5, atol=1e-6)
