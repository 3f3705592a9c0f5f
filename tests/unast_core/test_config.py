import pytest

from unast_core.config import PRESETS, budget_name, build_config, parse_budget
from unast_core.errors import UnastError


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_validate(preset):
    assert build_config(preset).preset == preset


def test_overrides_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  steps: 7\nsearch:\n  k: 5\n")
    cfg = build_config("smoke", path, {"finetune.lr_max": 1e-3, "budget": {"params": 0.5}})
    assert (cfg.finetune.steps, cfg.search.k, cfg.finetune.lr_max, cfg.budget) == (7, 5, 1e-3, {"params": 0.5})
    assert cfg.teacher.model == "tiny-random-llama"  # the preset survives the file


@pytest.mark.parametrize("overrides, field", [
    ({"budget": {"latency": 0.0}}, "budget"),
    ({"budget": {"latency": 1.5}}, "budget"),
    ({"budget": {"speed": 0.5}}, "budget"),
    ({"finetune.steps": "many"}, "finetune.steps"),
    ({"data.seq_len": 1}, "data.seq_len"),
    ({"search.max_overlap": 0}, "search.max_overlap"),
    ({"pool.ops": ["identity"]}, "pool.ops"),
    ({"finetune.lr_min": 1.0}, "finetune"),
    ({"nonsense": 1}, "nonsense"),
])
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(UnastError, match=f"invalid config field '{field}"):
        build_config("cpu", overrides=overrides)


def test_parse_budget():
    assert parse_budget(["latency=0.75", "params=0.5"]) == {"latency": 0.75, "params": 0.5}
    with pytest.raises(UnastError, match="latency=0.75"):
        parse_budget(["latency"])
    with pytest.raises(UnastError, match="not a number"):
        parse_budget(["latency=fast"])


def test_budget_family():
    budget = parse_budget(["latency=0.8,0.6,0.5", "params=0.9"])
    assert budget == {"latency": [0.8, 0.6, 0.5], "params": 0.9}
    cfg = build_config("smoke", overrides={"budget": budget})
    assert cfg.budgets() == [{"latency": 0.8, "params": 0.9}, {"latency": 0.6, "params": 0.9},
                             {"latency": 0.5, "params": 0.9}]
    assert [budget_name(b) for b in cfg.budgets()][0] == "latency-0.8_params-0.9"
    assert build_config("smoke", overrides={"budget": {"latency": [0.7, 0.7]}}).budgets() == [{"latency": 0.7}]
    with pytest.raises(UnastError, match="invalid config field 'budget'"):
        build_config("smoke", overrides={"budget": {"latency": [0.8, 1.2]}})
    with pytest.raises(UnastError, match="invalid config field 'budget'"):
        build_config("smoke", overrides={"budget": {"memory": []}})


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(UnastError, match="unknown preset"):
        build_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(UnastError, match="mapping"):
        build_config("cpu", bad)


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "budget":
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _alternatives(value):
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [value * 0.5, value * 2, value + 0.1]
    if isinstance(value, str):
        return ["mse", "kl", "deepspeed", "decode", "random", "dask", "shortgpt", "cpu", "other-dir"]
    if value is None:
        return [3, 0.5]
    return []


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_an_override_changes_only_the_field_it_names(preset):
    """`--set stage.field=value` moves that field alone: the preset's and the instance defaults of the
    stage's other fields (select.steps=5, finetune.steps=48, ...) stay (they once reset to class defaults)."""
    base = build_config(preset).model_dump(mode="json")
    tested = 0
    for dotted, value in _leaves(base):
        if dotted in ("preset", "budget"):
            continue
        for new in (v for v in _alternatives(value) if v != value):
            try:
                changed = build_config(preset, overrides={dotted: new}).model_dump(mode="json")
            except UnastError:
                continue
            moved = {k for k, v in _leaves(changed) if v != dict(_leaves(base))[k]}
            assert moved == {dotted}, (dotted, new, moved)
            tested += 1
            break
    assert tested >= 60, tested


def test_a_budget_kind_given_twice_is_an_error():
    with pytest.raises(UnastError, match="budget 'latency' is given twice.*latency=0.8,0.6"):
        parse_budget(["latency=0.7", "params=0.5", " latency=0.6"])


def test_a_setting_below_a_single_value_and_a_blank_name_are_errors():
    with pytest.raises(UnastError, match="'finetune.steps' is a single value, not a group"):
        build_config("smoke", overrides={"finetune.steps.max": 3})
    with pytest.raises(UnastError, match="not a dotted field name"):
        build_config("smoke", overrides={"finetune.": 3})


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  steps: 3\n   lr_max: 1\n")
    with pytest.raises(UnastError) as info:
        build_config("smoke", bad)
    message = str(info.value)
    assert "\n" not in message and "is not valid YAML" in message and "line 3" in message, message
