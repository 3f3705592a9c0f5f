"""Checksums recorded at write time and checked on read; ENOSPC leaves nothing partial."""

import errno
import os

import pytest
import torch

from unast_core import integrity
from unast_core.store import DiskFull, atomic_dir, read_json, read_tensors, write_json, write_tensors


def test_a_truncated_or_altered_file_is_never_read(tmp_path):
    good, cut, edited = tmp_path / "good.json", tmp_path / "cut.safetensors", tmp_path / "edited.json"
    write_json(good, {"a": 1})
    write_tensors(cut, {"h": torch.arange(64.0)})
    write_json(edited, {"score": 0.25})
    cut.write_bytes(cut.read_bytes()[:-40])                                   # a copy cut short
    edited.write_text(edited.read_text().replace("0.25", "0.75"))             # same size, other bytes
    assert read_json(good) == {"a": 1}
    for path, reason in ((cut, "truncated"), (edited, "altered")):
        with pytest.raises(integrity.CorruptArtifact, match=f"{path}.*{reason}"):
            read_json(path) if path.suffix == ".json" else read_tensors(path)
    warnings = []
    assert integrity.intact(good, None, warn=warnings.append)
    assert not integrity.intact(cut, edited, warn=warnings.append)
    assert [w.split()[2] for w in warnings] == [str(cut), str(edited)]  # one warning naming each file
    assert not cut.exists() and not edited.exists() and not integrity.sidecar(cut).exists()  # gone: recomputed


def test_a_file_from_before_checksums_is_trusted_and_recorded_from_then_on(tmp_path):
    legacy = tmp_path / "old.json"
    legacy.write_text('{"v": 2}')
    assert read_json(legacy) == {"v": 2} and integrity.sidecar(legacy).exists()
    legacy.write_text('{"v": 3}')
    assert not integrity.intact(legacy, warn=lambda m: None)


def test_a_directory_is_recorded_file_by_file(tmp_path):
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    assert integrity.tree_intact(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "sub" / "config.json").write_text("{ }")
    assert not integrity.tree_intact(tmp_path / "ckpt", warn=lambda m: None)


@pytest.mark.parametrize("how", ["oserror", "safetensors", "sidecar"])
def test_a_full_disk_leaves_no_partial_file_and_says_what_to_free(tmp_path, monkeypatch, how):
    import unast_core.store as store

    def full(*args, **kwargs):
        if how == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                           'message: "No space left on device" })')

    target = tmp_path / "states" / "boundary-000.safetensors"
    if how == "sidecar":
        monkeypatch.setattr(integrity, "record", lambda *a: full())
    else:
        def partial(tensors, path, metadata=None):
            open(path, "wb").write(b"\0" * 1000)  # some bytes made it before the disk filled
            full()
        monkeypatch.setattr(store, "save_file", partial)
    with pytest.raises(DiskFull) as info:
        write_tensors(target, {"h": torch.zeros(8)})
    message = str(info.value)
    assert "\n" not in message and str(target) in message and "GB free" in message
    assert "unast store gc" in message and "unast store du" in message
    assert list(target.parent.iterdir()) == []  # no temporary, no partial file, no sidecar
