"""A small run store on the tiny random teacher, shared by the task tests: each task is called as a plain
function (`task.fn`), without a flow, the way a worker runs it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tasks.capture import capture_states
from tasks.cost import cost_table
from tasks.prepare import prepare
from unast_core.config import RunConfig, build_config
from unast_core.records import CostTable, Prepared, States


@dataclass
class Store:
    config: RunConfig
    prep: Prepared
    lut: CostTable
    states: States
    calib: States


def smoke_config(home, **overrides) -> RunConfig:
    # fp32 pinned, so that the numbers do not depend on the CPU's bf16 support (tests/tasks/test_precision.py
    # runs the bf16 path).
    return build_config("smoke", overrides={"home": str(home), "cost.calibration_samples": 2,
                                            "compute.dtype": "float32", **overrides})


@pytest.fixture(scope="package")
def store(tmp_path_factory) -> Store:
    config = smoke_config(tmp_path_factory.mktemp("home"))
    prep = prepare.fn(config.teacher, config.data, config.cost, config.pool, config.compute, str(config.home))
    lut = cost_table.fn(prep, config.cost)
    states = capture_states.fn(prep, "validation", config.score.batch_size)
    calib = capture_states.fn(prep, "calibration", config.score.batch_size, config.distill.seqs)
    return Store(config, prep, lut, states, calib)
