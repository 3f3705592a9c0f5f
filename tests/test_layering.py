"""The core library never imports the orchestrator or the tracker (DESIGN.md layout)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_neither_prefect_nor_mlflow():
    files = sorted((ROOT / "unast_core").glob("*.py"))
    assert files
    offenders = {f.name: _imports(f) & {"prefect", "mlflow", "tasks", "flows"} for f in files}
    assert not any(offenders.values()), offenders


def test_exported_modeling_code_needs_only_torch_and_transformers():
    imports = _imports(ROOT / "unast_core" / "modeling_unast.py")
    assert imports <= {"__future__", "copy", "typing", "torch", "transformers"}, imports


def test_tasks_do_not_import_flows():
    for f in (ROOT / "tasks").glob("*.py"):
        assert "flows" not in _imports(f), f.name
