"""Compute dtype: resolution of `auto` from the hardware's capability (faked here), autocast, deployed copies."""

import pytest
import torch

from unast_core.train import precision
from unast_core.train.precision import autocast, deployed, resolve_dtype


@pytest.mark.parametrize("flags, expected", [
    (frozenset({"avx2", "avx512f"}), "float32"),      # AVX-512 without BF16: fp32
    (frozenset(), "float32"),                         # unknown CPU (no /proc/cpuinfo): fp32
    (frozenset({"avx512f", "avx512_bf16"}), "bfloat16"),
    (frozenset({"amx_bf16", "amx_tile"}), "bfloat16"),
])
def test_auto_follows_the_cpu_capability(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("float32", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_a_fallback_to_fp32_is_explained_only_for_auto(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    note = precision.fallback_note("auto", "cpu")
    assert note.startswith("compute.dtype=auto: this CPU has neither AVX-512-BF16 nor AMX") and "\n" not in note
    assert precision.fallback_note("float32", "cpu") is None  # asked for: nothing to explain
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precision.fallback_note("auto", "cpu") is None


def test_auto_on_cuda_without_bf16_is_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))  # the CPU does not decide
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:0") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match="use auto, float32 or bfloat16"):
        resolve_dtype("float16")


def test_autocast_and_deployed_copies():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    assert layer(x).dtype == torch.float32
    with autocast("float32"):
        assert layer(x).dtype == torch.float32
    with autocast("bfloat16"):
        assert layer(x).dtype == torch.bfloat16
    before = layer.weight.detach().clone()
    with deployed("bfloat16", layer) as (copy,):
        assert copy is not layer and copy.weight.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, before)  # never rounded in place
    with deployed("float32", layer) as (same,):
        assert same is layer
