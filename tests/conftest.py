"""Shared fixtures: tiny random models of every supported family, built in the test (no downloads)."""

import os

import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

_COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
TINY_CONFIGS = {
    "llama": dict(_COMMON),
    "mistral": dict(_COMMON, sliding_window=None),
    "qwen2": dict(_COMMON),
    "qwen3": dict(_COMMON),
    "gemma": dict(_COMMON),
    "gemma2": dict(_COMMON, sliding_window=16),
    "gemma3_text": dict(_COMMON, sliding_window=16, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "gpt2": dict(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=128),
}


# A stand-in for the held-out news corpus (the real one is fetched from PyPI; tests never download).
STAND_IN_NEWS = [f"Report {i}: the council of town {i % 7} met on Tuesday about the harbour, the rain and "
                 f"the price of bread, which rose by {i % 5} cents; the mayor said little." for i in range(120)]


# ... and for the Wikipedia articles (data.select_on = 'enwiki')
STAND_IN_WIKI = [f"Article {i}. The river {i % 11} rises in the northern hills and flows {i % 9 + 2} hundred miles "
                 f"to the sea; its valley was settled in the {i % 6 + 12}th century by farmers." for i in range(120)]


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Every test runs offline: pip download fails at once, and 'lee-news' and 'enwiki' read the stand-ins."""
    import subprocess

    from unast_core import fetch
    from unast_core.data import corpus

    monkeypatch.setattr(fetch, "_pip", lambda cmd: subprocess.CompletedProcess(cmd, 1, "", "tests never download"))
    monkeypatch.setattr(corpus, "lee_news_texts", lambda: list(STAND_IN_NEWS))
    monkeypatch.setattr(corpus, "enwiki_texts", lambda: list(STAND_IN_WIKI))


def tiny_model(model_type: str, seed: int = 0):
    config = AutoConfig.for_model(model_type, **TINY_CONFIGS[model_type])
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(params=sorted(TINY_CONFIGS))
def family_model(request):
    return tiny_model(request.param)


def assert_export_reloads(student, tmp_path, new_tokens: int = 4) -> None:
    """Export `student`, load it in a fresh interpreter that cannot import unast_core (the checkpoint
    carries its own modeling code), and check its logits and that it generates with the KV cache."""
    import subprocess
    import sys
    import textwrap

    from unast_core.report.export import export_checkpoint
    from unast_core.model.teacher import byte_tokenizer

    out = export_checkpoint(student, byte_tokenizer(), tmp_path / "ckpt", card="# card\n", results={"ok": 1})
    ids = torch.randint(1, 97, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = student(ids).logits[0, -1, :5].float()
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules['unast_core'] = None
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        ids = torch.tensor([{ids[0].tolist()}])
        with torch.no_grad():
            print(m(ids).logits[0, -1, :5].tolist())
            print(m.generate(ids, max_new_tokens={new_tokens}, do_sample=False).shape[1])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logits_line, length_line = proc.stdout.strip().splitlines()[-2:]
    atol = 1e-5 if next(student.parameters()).dtype == torch.float32 else 1e-2  # bf16: another attention kernel
    assert torch.allclose(torch.tensor(eval(logits_line)), expected, atol=atol)
    assert int(length_line) == 7 + new_tokens
