"""`unast export` / `unast eval`: bad input is one line and exit 2, before any model loads."""

from flows.cli import main


def test_export_bad_format_and_dir(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "--format onnx: use one of gguf, nemotron-nas" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "gguf"]) == 2
    assert "not an exported student" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "nemotron-nas", "--quant", "q4_k"]) == 2
    assert "--quant applies to --format gguf only" in capsys.readouterr().err


def test_eval_needs_an_exported_student(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--tasks", "x", "--no-teacher"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an exported student" in err
