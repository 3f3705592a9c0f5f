import pytest

from tasks.choose import pick, shortlist
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.records import Choice, Shortlist, Trained


def test_a_depth_baseline_settles_on_one_architecture(store):
    config = store.config.model_copy(update={"method": "shortgpt"})
    short = shortlist.fn(store.prep, store.states, store.calib, None, store.lut, {"params": 0.8}, config)
    assert isinstance(short, Shortlist) and not short.select and len(short.choices) == 1
    choice = pick.fn(short, [])
    assert isinstance(choice, Choice) and choice.results["removed_blocks"]
    assert choice.arch.measured_ratio is not None and "shortgpt" in short.stages


def test_uniform_initialises_its_sublayers_from_the_teacher(store):
    config = store.config.model_copy(update={"method": "uniform"})
    short = shortlist.fn(store.prep, store.states, store.calib, None, store.lut, {"params": 0.6}, config)
    choice = short.choices[0]
    assert choice.arch.predicted_ratio["params"] <= 0.6 and choice.candidates
    assert all(path.endswith(".safetensors") for path in choice.candidates.values())


def test_an_unreachable_uniform_budget_is_an_error(store):
    config = store.config.model_copy(update={"method": "uniform"})
    with pytest.raises(InfeasibleBudget, match="narrowest uniform width"):
        shortlist.fn(store.prep, store.states, store.calib, None, store.lut, {"params": 0.01}, config)


def test_pick_takes_the_best_validation_loss_and_fails_when_all_diverged(store):
    config = store.config.model_copy(update={"method": "shortgpt"})
    one = shortlist.fn(store.prep, store.states, store.calib, None, store.lut, {"params": 0.8}, config).choices[0]
    two = one.model_copy(update={"arch": one.arch.model_copy(update={"rank": 1})})
    short = Shortlist(choices=[one, two], select=True)
    trials = [Trained(status="ok", label="a", layers=[], val_loss=3.0, weights="a"),
              Trained(status="ok", label="b", layers=[], val_loss=2.5, weights="b")]
    best = pick.fn(short, trials)
    assert best.arch.rank == 1 and best.init == "b" and [s["val_loss"] for s in best.results["select"]] == [3.0, 2.5]
    assert best.results["select_ranked_on"] == "validation"
    assert pick.fn(short, trials, "enwiki").results["select_ranked_on"] == "enwiki"
    with pytest.raises(UnastError, match="diverged"):
        pick.fn(short, [t.model_copy(update={"status": "failed"}) for t in trials])
