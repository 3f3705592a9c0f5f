import math

import pytest

from unast_core.model.ops import OpSpec
from unast_core.report.figures import (
    architecture_chart,
    cost_score_scatter,
    markdown_table,
    sublayer_error_chart,
    width_fraction,
)

DIMS = {"heads": 9, "kv_heads": 3, "head_dim": 64, "hidden": 1536, "hidden_size": 576}
ATTN = {"op": "attention", "heads": 3, "kv_heads": 1, "head_dim": 64}
MLP = {"op": "mlp", "hidden": 768}
TEACHER, SKIP, LINEAR = {"op": "teacher"}, {"op": "identity"}, {"op": "linear"}
LAYERS = [{"attn": TEACHER, "mlp": TEACHER}, {"attn": ATTN, "mlp": MLP},
          {"attn": SKIP, "mlp": LINEAR}, {"attn": LINEAR, "mlp": SKIP}]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, expected):
    assert path == str(expected)
    data = expected.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in expected.parent.iterdir() if not p.name.endswith(".sum")] == [expected.name]  # no temp file left


def test_spec_label():
    assert [OpSpec.of(s).label for s in (TEACHER, SKIP, LINEAR, ATTN, MLP)] == [
        "teacher", "skip", "linear", "attn h3/kv1/d64", "mlp 768"]


def test_width_fraction_per_op():
    assert width_fraction(TEACHER, "attn", DIMS) == 1.0
    assert width_fraction(SKIP, "mlp", DIMS) == 0.0
    assert width_fraction(ATTN, "attn", DIMS) == pytest.approx(1 / 3)
    assert width_fraction(MLP, "mlp", DIMS) == pytest.approx(0.5)
    # linear: (576*576 + 576) weights over the teacher's 2*576*576 + 2*576*192 (attn) or 3*576*1536 (mlp)
    assert width_fraction(LINEAR, "attn", DIMS) == pytest.approx(332352 / 884736)  # 0.3757
    assert width_fraction(LINEAR, "mlp", DIMS) == pytest.approx(332352 / 2654208)  # 0.1252
    with pytest.raises(ValueError):
        width_fraction({"op": "conv"}, "attn", DIMS)


def test_architecture_chart_writes_png(tmp_path):
    out = tmp_path / "arch" / "student.png"
    assert_png(architecture_chart(LAYERS, DIMS, out, title="student"), out)


def test_cost_score_scatter_writes_png_and_skips_nan(tmp_path):
    points = [{"label": "skip", "kind": "attn", "latency": 0.0, "score": 0.5, "params": 0.0},
              {"label": "attn h3/kv1/d64", "kind": "attn", "latency": 0.4, "score": 0.002, "params": 0.33},
              {"label": "mlp 768", "kind": "mlp", "latency": 0.55, "score": float("nan"), "params": 0.5},
              {"label": "linear", "kind": "mlp", "latency": 0.2, "score": -0.01, "params": 0.13}]
    out = tmp_path / "scatter.png"
    assert_png(cost_score_scatter(points, out), out)


def test_sublayer_error_chart_tolerates_gaps(tmp_path):
    errors = {"linear": [0.1, 0.2, None, 0.05, 0.3, 0.4, 0.2, 0.1],
              "attn h3/kv1/d64": [0.01, None, 0.02, math.nan, 0.03, None, 0.0, None]}
    out = tmp_path / "errors.png"
    assert_png(sublayer_error_chart(errors, out, title="nmse"), out)


def test_markdown_table():
    table = markdown_table(["op", "score", "n"], [["mlp 768", 0.123456, 3], ["skip", None, math.nan],
                                                  ["a|b", 12345.678, 1e-5]])
    assert table == ("| op | score | n |\n"
                     "|---|---|---|\n"
                     "| mlp 768 | 0.1235 | 3 |\n"
                     "| skip | — | — |\n"
                     "| a\\|b | 1.235e+04 | 1e-05 |")


def blank_rows(path) -> tuple[float, float]:
    """(share of pixel rows that are all background, longest run of such rows / height) of a PNG."""
    import numpy as np
    from matplotlib.image import imread

    image = imread(str(path))[..., :3]
    blank = (image > 0.97).all(axis=(1, 2))
    longest = run = 0
    for row in blank:
        run = run + 1 if row else 0
        longest = max(longest, run)
    return float(blank.mean()), longest / len(blank)


def assert_not_mostly_blank(path) -> None:
    share, band = blank_rows(path)
    assert share < 0.5 and band < 0.15, (path, round(share, 3), round(band, 3))


def test_the_blank_check_sees_an_empty_band(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 6))
    fig.add_axes((0.1, 0.75, 0.8, 0.2)).plot([0, 1])
    fig.add_axes((0.1, 0.05, 0.8, 0.2)).plot([0, 1])  # half the height empty between them
    fig.savefig(tmp_path / "gap.png")
    with pytest.raises(AssertionError):
        assert_not_mostly_blank(tmp_path / "gap.png")


@pytest.mark.parametrize("skips", ["none", "attention only"])
def test_a_30_block_architecture_with_its_long_summary_renders_without_an_empty_band(tmp_path, skips):
    """SmolLM2's 30 blocks. A panel without a skipped sublayer left constrained layout nothing to size
    ("constrained_layout not applied") and most of the chart's height blank; a title wider than the figure
    (the architecture summary) must not do it either."""
    import warnings

    kept = [{"attn": TEACHER, "mlp": TEACHER}, {"attn": ATTN, "mlp": MLP}, {"attn": LINEAR, "mlp": MLP}]
    layers = [kept[i % 3] for i in range(30)]
    if skips == "attention only":
        layers[4] = {"attn": SKIP, "mlp": MLP}
    title = "unast latency-0.75: " + " ".join(["TT", "am", "Lm", "LT", "Tm"] * 6) + " (30 blocks, 60 sublayers)"
    out = tmp_path / "arch30.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the layout warning fails the test
        architecture_chart(layers, DIMS, out, title=title)
    assert_not_mostly_blank(out)
