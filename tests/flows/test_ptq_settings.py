"""Bad compression settings are one-line config errors naming the field (exit 2 from the CLI)."""

import pytest

from flows.cli import _parse_args, _overrides, main
from unast_core.config import build_config
from unast_core.errors import UnastError


@pytest.mark.parametrize("setting,field", [({"ptq.bits": 5}, "ptq.bits"), ({"ptq.sparsity": 1.0}, "ptq.sparsity"),
                                           ({"ptq.sparsity": "4:4"}, "ptq.sparsity"),
                                           ({"ptq.method": "awq"}, "ptq.method"), ({"ptq.group_size": 0}, "ptq.group_size")])
def test_bad_settings_name_the_field(setting, field):
    with pytest.raises(UnastError, match=f"invalid config field '{field}'"):
        build_config("cpu", None, setting)


def test_cli_bad_bits_is_one_line_exit_2(capsys):
    assert main(["run", "--set", "ptq.method=gptq", "--set", "ptq.bits=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unast: error: invalid config field 'ptq.bits'")


def test_n_m_survives_the_command_line_and_baselines_use_the_ptq_settings():
    args = _parse_args(["run", "--method", "sparsegpt", "--set", "ptq.sparsity=2:4"])
    config = build_config("cpu", None, _overrides(args))
    assert config.ptq.sparsity == "2:4"  # YAML alone would read the base-60 integer 124
    assert config.ptq_settings().method == "sparsegpt" and not config.needs_scores()
    assert build_config("cpu", None, {}).ptq_settings() is None
    assert build_config("cpu", None, {"ptq.method": "gptq", "ptq.bits": 3}).ptq_settings().bits == 3


def test_n_m_that_does_not_divide_the_teacher_stops_before_any_work():
    from types import SimpleNamespace

    from tasks.ptq import check_ptq

    prep = SimpleNamespace(dims={"hidden_size": 32, "heads": 4, "head_dim": 8, "hidden": 50})
    with pytest.raises(UnastError, match=r"invalid config field 'ptq.sparsity'.*multiple of 4; it is 50"):
        check_ptq(prep, build_config("cpu", None, {"method": "sparsegpt", "ptq.sparsity": "3:4"}).ptq_settings())
    check_ptq(prep, build_config("cpu", None, {"ptq.method": "gptq"}).ptq_settings())
    check_ptq(prep, None)
