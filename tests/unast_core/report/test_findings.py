import copy
import json
import math

import pytest

from unast_core.report.findings import findings, findings_for, findings_markdown, sensitivity_chart
from unast_core.report.card import full_report

NAN = math.nan
TEACHER, SKIP, LINEAR = {"op": "teacher"}, {"op": "identity"}, {"op": "linear"}
ATTN = {"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 8}
MLP = {"op": "mlp", "hidden": 16}
POOL = [TEACHER, SKIP, LINEAR, ATTN, MLP]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 6 blocks, so the thirds are blocks 0-1, 2-3, 4-5.
ATTN_SKIP = [0.1, 0.2, 0.3, 0.12, 0.18, 0.3]      # mean 0.2, median 0.19
MLP_SKIP = [1.0, 0.4, 0.5, 0.45, 0.55, 0.7]       # mean 0.6, median 0.525
ATTN_LINEAR = [0.05, 0.3, 0.15, NAN, 0.09, 0.3]   # better than skip on blocks 0, 2, 4 (3 of 5); ratios median 0.5
MLP_LINEAR = [0.2, 0.08, 1.0, 0.225, 0.11, 0.35]  # better on all but block 2 (5 of 6); ratios median 0.35
CHOSEN_ATTN = [TEACHER, SKIP, LINEAR, LINEAR, TEACHER, TEACHER]  # thirds: 1/2, 2/2, 0/2
CHOSEN_MLP = [TEACHER, TEACHER, MLP, TEACHER, SKIP, LINEAR]      # thirds: 0/2, 1/2, 2/2


def make_table(attn_skip=ATTN_SKIP, mlp_skip=MLP_SKIP, attn_linear=ATTN_LINEAR, mlp_linear=MLP_LINEAR, pool=POOL):
    sublayers, scores = [], []
    for b in range(len(attn_skip)):
        sublayers += [f"{b:02d}.attn", f"{b:02d}.mlp"]
        scores += [[0.0, attn_skip[b], attn_linear[b], 0.01, NAN], [0.0, mlp_skip[b], mlp_linear[b], NAN, 0.02]]
    keep = [i for i, spec in enumerate(POOL) if spec in pool]
    return {"pool": [POOL[i] for i in keep], "sublayers": sublayers, "scores": [[row[i] for i in keep] for row in scores],
            "losses": [], "errors": [], "weights": []}


def make_layers(attn=CHOSEN_ATTN, mlp=CHOSEN_MLP):
    return [{"attn": a, "mlp": m} for a, m in zip(attn, mlp)]


def test_sensitivity_per_kind_and_ratio():
    f = findings(make_table(), make_layers())
    json.dumps(f, allow_nan=False)  # JSON-serialisable, no NaN leaks out
    attn, mlp = f["kinds"]["attn"], f["kinds"]["mlp"]
    assert attn["skip"] == {"mean": pytest.approx(0.2), "median": pytest.approx(0.19), "n": 6}
    assert mlp["skip"] == {"mean": pytest.approx(0.6), "median": pytest.approx(0.525), "n": 6}
    assert attn["linear"]["n"] == 5 and attn["linear"]["mean"] == pytest.approx(0.89 / 5)
    assert f["sensitivity_ratio"] == pytest.approx(3.0)
    assert f["sensitivity_ratio_median"] == pytest.approx(0.525 / 0.19)
    assert [(i["sublayer"], i["score"]) for i in f["most_sensitive"]] == [("00.mlp", 1.0), ("05.mlp", 0.7), ("04.mlp", 0.55)]
    assert [i["sublayer"] for i in f["least_sensitive"]] == ["00.attn", "03.attn", "04.attn"]
    # the narrower candidates only count on their own kind (NaN elsewhere)
    assert attn["candidates"]["attn h2/kv1/d8"]["n"] == 6 and "mlp 16" not in attn["candidates"]


def test_chosen_counts_and_depth_thirds():
    f = findings(make_table(), make_layers())
    assert f["chosen"] == {"sublayers": 12, "replaced": 6, "identity": 2, "linear": 3, "narrower": 1}
    attn, mlp = f["kinds"]["attn"], f["kinds"]["mlp"]
    assert attn["replaced"] == 3 and attn["by_op"] == {"skip": 1, "linear": 2}
    assert mlp["replaced"] == 3 and mlp["by_op"] == {"mlp 16": 1, "skip": 1, "linear": 1}
    assert mlp["by_category"] == {"identity": 1, "linear": 1, "narrower": 1}
    assert [(d["third"], d["first_block"], d["last_block"]) for d in f["depth"]] == [
        ("first", 0, 1), ("middle", 2, 3), ("last", 4, 5)]
    assert [d["attn_fraction"] for d in f["depth"]] == [0.5, 1.0, 0.0]
    assert [d["mlp_fraction"] for d in f["depth"]] == [0.0, 0.5, 1.0]
    assert [d["mlp_skipped"] for d in f["depth"]] == [0, 0, 1]
    assert f["depth"][0]["mlp_mean_skip"] == pytest.approx(0.7)
    assert attn["median_skip_kept"] == pytest.approx(0.18) and attn["median_skip_replaced"] == pytest.approx(0.2)


def test_uneven_thirds():
    table = make_table(*(v[:4] for v in (ATTN_SKIP, MLP_SKIP, ATTN_LINEAR, MLP_LINEAR)))
    f = findings(table, make_layers(CHOSEN_ATTN[:4], CHOSEN_MLP[:4]))
    assert [(d["first_block"], d["last_block"]) for d in f["depth"]] == [(0, 1), (2, 2), (3, 3)]
    assert [d["attn_fraction"] for d in f["depth"]] == [0.5, 1.0, 1.0]


def test_linear_vs_skip():
    f = findings(make_table(), make_layers())
    attn, mlp = f["linear_vs_skip"]["attn"], f["linear_vs_skip"]["mlp"]
    assert (attn["compared"], attn["linear_better"]) == (5, 3) and attn["median_ratio"] == pytest.approx(0.5)
    assert (mlp["compared"], mlp["linear_better"]) == (6, 5) and mlp["median_ratio"] == pytest.approx(0.35)


def test_nan_and_none_scores_are_ignored():
    table = make_table()
    table["scores"][4][1] = NAN   # 02.attn skip failed
    table["scores"][5][1] = None  # 02.mlp skip missing
    table = json.loads(json.dumps(table))  # as read back from the JSON file (NaN literal)
    f = findings(table, make_layers())
    assert f["kinds"]["attn"]["skip"]["n"] == 5
    assert f["kinds"]["attn"]["skip"]["mean"] == pytest.approx(0.9 / 5)
    assert f["kinds"]["mlp"]["skip"]["mean"] == pytest.approx(3.1 / 5)
    assert f["linear_vs_skip"]["attn"]["compared"] == 4 and f["linear_vs_skip"]["mlp"]["compared"] == 5
    assert f["depth"][1]["attn_mean_skip"] == pytest.approx(0.12)
    json.dumps(f, allow_nan=False)


def test_pool_without_linear_or_identity():
    f = findings(make_table(pool=[TEACHER, SKIP, ATTN, MLP]), make_layers(mlp=[TEACHER] * 6))
    assert "linear_vs_skip" not in f and "linear" not in f["kinds"]["attn"]
    assert f["sensitivity_ratio"] == pytest.approx(3.0)
    text = findings_markdown(f)
    assert "linear replacement" not in text and "Skipping an MLP costs 3.0x" in text

    f = findings(make_table(pool=[TEACHER, LINEAR, MLP]), make_layers())
    assert not {"sensitivity_ratio", "most_sensitive", "linear_vs_skip"} & set(f)
    assert "skip" not in f["kinds"]["mlp"] and "attn_mean_skip" not in f["depth"][0]
    text = findings_markdown(f)
    assert "Skipping" not in text and "## Findings" in text and "replaces 6 of 12" in text


def test_nothing_replaced():
    f = findings(make_table(), make_layers([TEACHER] * 6, [TEACHER] * 6))
    assert f["chosen"] == {"sublayers": 12, "replaced": 0, "identity": 0, "linear": 0, "narrower": 0}
    assert all(d["attn_fraction"] == 0 and d["mlp_fraction"] == 0 for d in f["depth"])
    text = findings_markdown(f)
    assert "replaces none of its 12 sublayers" in text and "Compressed depths" not in text


def test_table_must_match_the_architecture():
    with pytest.raises(ValueError, match="6 blocks"):
        findings(make_table(), make_layers()[:5])


def test_markdown_names_the_more_sensitive_kind():
    mlp_text = findings_markdown(findings(make_table(), make_layers()))
    assert "Skipping an MLP costs 3.0x as much validation loss as skipping an attention sublayer" in mlp_text
    assert "(mean 0.6 vs 0.2 nats; median 0.525 vs 0.19)" in mlp_text
    assert "MLPs are the more sensitive kind" in mlp_text and "attention is the more sensitive" not in mlp_text
    assert "A linear replacement scores better (lower) than skipping on 3 of 5 attention sublayers" in mlp_text
    assert "attention is replaced most in the middle third" in mlp_text
    assert "MLP is replaced most in the last third" in mlp_text
    assert "| middle | 2–3 | 2/2 (100%) | 1/2 (50%) |" in mlp_text

    attn_text = findings_markdown(findings(make_table(attn_skip=[4 * v for v in MLP_SKIP], mlp_skip=ATTN_SKIP),
                                           make_layers()))
    assert "Skipping an attention sublayer costs 12.0x as much validation loss as skipping an MLP" in attn_text
    assert "attention is the more sensitive kind" in attn_text and "MLPs are the more sensitive" not in attn_text
    assert "Most sensitive to skipping: 00.attn (4)" in attn_text


def test_markdown_mentions_median_disagreeing_with_mean():
    # one MLP outlier drives the MLP mean above attention's while the MLP median stays below
    f = findings(make_table(mlp_skip=[10.0, 0.1, 0.1, 0.1, 0.1, 0.1]), make_layers())
    assert f["sensitivity_ratio"] > 1 > f["sensitivity_ratio_median"]
    assert "By median the order reverses: the median skip score is higher for attention" in findings_markdown(f)


def assert_png(path, expected):
    assert path == str(expected)
    data = expected.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in expected.parent.iterdir() if not p.name.endswith(".sum")] == [expected.name]  # no temp file left


def test_sensitivity_chart_writes_png(tmp_path):
    table = make_table()
    table["scores"][0][2] = -0.5  # a negative linear score on a wide range: symlog axis
    table["scores"][1][1] = 1000.0
    out = tmp_path / "charts" / "sensitivity.png"
    assert_png(sensitivity_chart(table, out, "sensitivity"), out)


def test_sensitivity_chart_without_skip_or_linear(tmp_path):
    out = tmp_path / "s.png"
    assert_png(sensitivity_chart(make_table(pool=[TEACHER, ATTN, MLP]), out, ""), out)


def results_for(tmp_path, **extra):
    results = {
        "budget": {"latency": 0.5}, "summary": "T- LL", "layers": make_layers(), "output": str(tmp_path / "out"),
        "teacher": {"test_ppl": 10.0, "params": 1000}, "regime": {"batch_size": 1, "seq_len": 64},
        "student": {"test_ppl": 11.0, "latency_ratio": 0.5, "param_ratio": 0.6, "params": 600, "kl_to_teacher": 0.1},
        "wall_s": {"total": 1.0},
    }
    results.update(extra)
    return results


def test_full_report_appends_findings(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(make_table()))  # NaN literals, like the real tables
    results = results_for(tmp_path, scores_path=str(path))
    assert findings_for(results)["sensitivity_ratio"] == pytest.approx(3.0)
    report = full_report(results)
    assert "## Findings" in report and "Skipping an MLP costs 3.0x" in report
    assert report.index("## Architecture") < report.index("## Findings")


def test_full_report_without_scores(tmp_path):
    for results in (results_for(tmp_path), results_for(tmp_path, scores_path=str(tmp_path / "gone.json")),
                    results_for(tmp_path, scores_path=None)):
        assert findings_for(results) is None
        report = full_report(results)
        assert "## Architecture" in report and "## Findings" not in report
    (tmp_path / "broken.json").write_text("{not json")
    assert findings_for(results_for(tmp_path, scores_path=str(tmp_path / "broken.json"))) is None


def test_full_report_with_a_mismatched_table(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(make_table()))
    results = results_for(tmp_path, scores_path=str(path), layers=copy.deepcopy(make_layers())[:5])
    report = full_report(results)
    assert "## Findings" in report and "not computed: ValueError" in report
