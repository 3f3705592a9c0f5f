import pytest

from unast_core.report.tolerance import tolerance, tolerance_chart, tolerance_markdown

GPTQ = {"op": "compressed", "method": "gptq", "bits": 4, "linears": "both"}
SPARSE = {"op": "compressed", "method": "sparsegpt", "sparsity": "2:4", "linears": "first"}
TABLE = {"pool": [{"op": "teacher"}, {"op": "identity"}, GPTQ, SPARSE],
         "sublayers": ["00.attn", "00.mlp", "01.attn", "01.mlp", "02.attn", "02.mlp"],
         "scores": [[0, 2.0, 0.01, 0.2], [0, 1.0, 0.03, 0.5], [0, 0.5, 0.02, None],
                    [0, 0.4, 0.05, 0.3], [0, 0.3, 0.04, 0.1], [0, 0.9, 0.07, 0.9]]}


def test_tolerance_by_kind_depth_and_choice(tmp_path):
    layers = [{"attn": GPTQ, "mlp": {"op": "teacher"}}, {"attn": {"op": "teacher"}, "mlp": SPARSE},
              {"attn": {"op": "identity"}, "mlp": {"op": "teacher"}}]
    t = tolerance(TABLE, layers)
    gptq, sparse = t["candidates"]
    assert gptq["label"] == "gptq4 both" and gptq["by_kind"]["attn"] == pytest.approx(0.07 / 3)
    assert gptq["by_third"]["mlp"] == pytest.approx([0.03, 0.05, 0.07])
    assert gptq["most_tolerant"][0] == ("00.attn", 0.01) and gptq["least_tolerant"][0] == ("02.mlp", 0.07)
    assert sparse["by_kind"]["attn"] == pytest.approx(0.15)  # the missing score is left out, not counted as 0
    assert t["chosen"] == [{"sublayer": "00.attn", "label": "gptq4 both"},
                           {"sublayer": "01.mlp", "label": "sparsegpt 2:4 first"}]
    text = tolerance_markdown(t)
    assert "attention tolerates it better than MLP (0.02333 vs 0.05)" in text
    assert "compresses 2 sublayers: 00.attn gptq4 both, 01.mlp sparsegpt 2:4 first" in text
    assert (tmp_path / "t.png").exists() is False and tolerance_chart(TABLE, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_no_compressed_candidates_no_section():
    assert tolerance({**TABLE, "pool": TABLE["pool"][:2], "scores": [r[:2] for r in TABLE["scores"]]}) is None
