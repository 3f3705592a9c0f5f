"""Imports only point down: deployments -> flows -> tasks -> unast_core (DESIGN.md layout)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, full: bool = False) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name if full else alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module if full else node.module.split(".")[0])
    return names


def test_core_imports_neither_prefect_nor_mlflow():
    files = sorted((ROOT / "unast_core").rglob("*.py"))
    assert len(files) > 20
    offenders = {str(f.relative_to(ROOT)): _imports(f) & {"prefect", "mlflow", "tasks", "flows", "prefect_dask",
                                                         "distributed"} for f in files}
    assert not any(offenders.values()), offenders


def test_exported_modeling_code_needs_only_torch_and_transformers():
    imports = _imports(ROOT / "unast_core" / "model" / "modeling_unast.py")
    assert imports <= {"__future__", "copy", "typing", "torch", "transformers"}, imports


def test_tasks_do_not_import_flows():
    for f in (ROOT / "tasks").glob("*.py"):
        assert "flows" not in _imports(f), f.name


def test_the_flow_uses_only_the_cores_config_and_records():
    """The flow modules sequence tasks; every decision sits in a core function behind a task."""
    for name in ("compress.py", "stages.py", "runners.py"):
        core = {m for m in _imports(ROOT / "flows" / name, full=True) if m.startswith("unast_core")}
        assert core <= {"unast_core.config", "unast_core.records"}, (name, core)
