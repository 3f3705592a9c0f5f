"""cost.engine=llama.cpp: the cost table and the architecture check timed as GGUFs in llama.cpp."""

import pytest
import torch

from unast_core.config import RegimeConfig
from unast_core.search.llama_cpp import as_choices, as_layers

LAYERS = [{"attn": {"op": "teacher"}, "mlp": {"op": "linear"}}, {"attn": {"op": "identity"}, "mlp": {"op": "teacher"}}]


def test_sublayer_choices_round_trip():
    assert as_choices(LAYERS) == {1: {"op": "linear"}, 2: {"op": "identity"}}
    assert as_layers(2, as_choices(LAYERS)) == LAYERS


def test_cost_table_timed_in_llama_cpp(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM

    from tests.unast_core.report.test_gguf import TOKENIZER
    from unast_core.model.teacher import tiny_random_config
    from unast_core.search.cost import build_lut
    from unast_core.search.llama_cpp import gguf_measure, gguf_ratios

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_random_config(len(TOKENIZER))).eval()
    pool = [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"}, {"op": "mlp", "hidden": 88}]
    regime = RegimeConfig(kind="prefill", seq_len=32)
    timed = []

    def measure(variants):
        timed.append(sorted(variants))
        return gguf_measure(model, TOKENIZER, tmp_path, regime, 1, 3, threads=1)(variants)

    import unast_core.search.llama_cpp as engine

    real = engine.gguf_latency
    monkeypatch.setattr(engine, "gguf_latency", lambda *a, **k: real(*a, **{**k, "group": 3}))  # several groups

    lut = build_lut(model, pool, regime, 1, 3, calibration_samples=2, measure=measure)
    assert timed[0] == sorted(lut["measured"]) and "mlp:mlp-88" in timed[0] and "attn:linear" in timed[0]
    assert timed[1] == ["arch0", "arch1", "teacher"]  # the calibration, in llama.cpp too
    assert lut["teacher"]["latency"] > 0 and all(row[1] == 0 for row in lut["costs"]["latency"])
    assert lut["calibration"]["latency"]["points"]
    assert not list(tmp_path.glob("*.gguf"))  # variants are removed once timed
    monkeypatch.undo()
    ratios = gguf_ratios(gguf_measure(model, TOKENIZER, tmp_path, regime, 1, 3, threads=1), [LAYERS * 2])
    assert len(ratios) == 1 and ratios[0] > 0  # (a tiny model: the value itself is timing noise)
