"""`store du` and `store gc` on a store built here: sizes by stage, what goes, what is freed."""

import os
import time

import torch

from unast_core import integrity
from unast_core.housekeeping import du, gc, units
from unast_core.resources import disk_warning
from unast_core.store import copy_tree, write_json, write_tensors


def _age(path, seconds_ago):
    """Make a unit look last used `seconds_ago` (its sidecars' times)."""
    stamp = time.time() - seconds_ago
    for side in [p for p in path.parent.rglob(".*.sum")] if path.is_file() else path.rglob(".*.sum"):
        os.utime(side, (stamp, stamp))


def _store(tmp_path):
    run = tmp_path / "home" / "runs" / "abcd"
    old_states = run / "activations" / "k1" / "validation"
    new_states = run / "activations" / "k2" / "validation"
    write_tensors(old_states / "boundary-000.safetensors", {"h": torch.zeros(1000)})
    write_tensors(new_states / "boundary-000.safetensors", {"h": torch.zeros(500)})
    write_json(run / "candidates" / "00.mlp" / "mlp-k3.json", {"weights": "x"})
    write_tensors(run / "candidates" / "00.mlp" / "mlp-k3.safetensors", {"w": torch.zeros(300)})
    write_json(run / "search" / "s1.json", {"architectures": []})
    final = run / "final" / "s1"
    write_tensors(final / "model.safetensors", {"w": torch.zeros(2000)})
    copy_tree(final, tmp_path / "out")  # the export in an output directory: hard links
    for unit in (old_states, run / "candidates" / "00.mlp" / "mlp-k3.json", final):
        _age(unit, 3600)
    (run / "lut").mkdir()
    (run / "lut" / "legacy.json").write_text("{}")  # written before use was recorded
    os.utime(run / "lut" / "legacy.json", (time.time() - 7200,) * 2)
    return tmp_path / "home", run


def test_du_sizes_by_teacher_and_stage(tmp_path):
    home, run = _store(tmp_path)
    report = du(home)
    stages = report["teachers"][0]["stages"]
    assert set(stages) == {"activations", "candidates", "search", "final", "lut"}
    assert stages["activations"] > 6000 and stages["final"] > 8000
    assert report["total"] == sum(stages.values()) + sum(report["other"].values())


def test_gc_drops_what_was_not_used_since_the_cutoff_and_counts_only_what_it_frees(tmp_path):
    home, run = _store(tmp_path)
    cutoff = time.time() - 1800
    dry = gc(home, cutoff, dry_run=True)
    assert sorted(os.path.relpath(u, run) for u in dry["units"]) == [
        "activations/k1/validation", "candidates/00.mlp/mlp-k3", "final/s1"]
    assert dry["kept_unrecorded"] == 1  # lut/legacy.json: no use record, kept
    states = (run / "activations/k1/validation/boundary-000.safetensors").stat().st_size
    weights = (run / "candidates/00.mlp/mlp-k3.safetensors").stat().st_size
    export = (run / "final/s1/model.safetensors").stat().st_size
    assert dry["linked_elsewhere"] >= export  # the export's weights stay on disk in out/
    assert states + weights <= dry["freed"] < states + weights + export
    assert (run / "final/s1").exists()  # a dry run deletes nothing
    export_inode = (tmp_path / "out" / "model.safetensors").stat().st_ino

    done = gc(home, cutoff, dry_run=False, unrecorded="drop")
    assert len(done["units"]) == 4 and done["freed"] > dry["freed"] - 1
    left = sorted(os.path.relpath(u.path, run) for u in units(run))
    assert left == ["activations/k2/validation", "search/s1"]
    # the export in out/ is untouched: same inode, still intact
    assert (tmp_path / "out" / "model.safetensors").stat().st_ino == export_inode
    assert integrity.tree_intact(tmp_path / "out")


def test_the_disk_warning_says_how_much_the_run_needs_and_what_is_free(tmp_path):
    assert disk_warning(tmp_path / "not-yet" / "home", 1) is None
    warning = disk_warning(tmp_path / "not-yet" / "home", 10**18)
    assert "may write up to 1000000000.00 GB" in warning and "GB are free" in warning and "\n" not in warning
