"""Security properties of the code base, checked on the source and on the functions that decide them:
no unpickling, no teacher code run unless asked for, an exported modeling file that only computes, and
servers that listen on loopback only."""

from __future__ import annotations

import ast
import json
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("unast_core", "tasks", "flows", "deployments", "bench")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# --- no pickle ------------------------------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "pickletools", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal"}
PICKLE_READERS = {"read_pickle", "to_pickle"}  # pandas


def _dotted(node: ast.AST) -> str:
    """`torch.load` for the expression torch.load, '' for anything that is not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def pickle_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for every pickle import or use, and every torch.load without weights_only=True."""
    found = []
    tree = ast.parse(source)
    torch_names = {"torch"}  # names bound to the torch module (import torch as t)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    found.append((node.lineno, f"import {alias.name}"))
                if alias.name == "torch":
                    torch_names.add(alias.asname or "torch")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in PICKLE_MODULES:
                found.append((node.lineno, f"from {module} import ..."))
            if module == "torch" and any(alias.name == "load" for alias in node.names):
                found.append((node.lineno, "from torch import load (use torch.load(..., weights_only=True))"))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, attr = name.rpartition(".")
            if attr == "load" and head in torch_names:
                weights_only = _keyword(node, "weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append((node.lineno, f"{name}( without weights_only=True"))
            if attr in PICKLE_READERS:
                found.append((node.lineno, f"{name}("))
            if attr == "load" and head in {"np", "numpy"}:
                allow = _keyword(node, "allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    found.append((node.lineno, f"{name}(allow_pickle=...)"))
            if name in {"__import__", "importlib.import_module", "import_module"} and node.args \
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in PICKLE_MODULES:
                found.append((node.lineno, f"{name}({node.args[0].value!r})"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in PICKLE_MODULES:
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return sorted(set(found))


def _python_files() -> list[Path]:
    files = [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 30 and any(p.name == "teacher.py" for p in files)  # the scan sees the tree
    return files


def test_the_pickle_scanner_finds_what_it_looks_for():
    offenders = textwrap.dedent("""
        import pickle
        import torch as t
        from joblib import dump
        import numpy as np
        import pandas as pd
        state = t.load("x.pt")
        other = t.load("x.pt", weights_only=False)
        fine = t.load("x.pt", weights_only=True)
        arr = np.load("a.npy", allow_pickle=True)
        df = pd.read_pickle("f.pkl")
        mod = __import__("cloudpickle")
        blob = pickle.dumps(state)
    """)
    lines = [line for line, _ in pickle_uses(offenders)]
    assert lines == [2, 4, 7, 8, 10, 11, 12, 13], pickle_uses(offenders)
    assert pickle_uses("import torch\nx = torch.load('m.pt', map_location='cpu', weights_only=True)\n") == []


def test_no_code_unpickles():
    """Every .py file of the package and the benchmarks: no pickle imports or calls, and torch.load only with
    weights_only=True (safetensors everywhere else)."""
    offenders = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in _python_files()
                 for line, what in pickle_uses(path.read_text(encoding="utf-8"))]
    assert not offenders, "pickle in the code:\n" + "\n".join(offenders)


# --- the teacher's own code -----------------------------------------------------------------------------------

def _teacher_with_remote_code(tmp_path: Path, model_type: str) -> tuple[Path, Path]:
    """A tiny Llama directory whose config.json maps the Auto classes to a python file that, when imported,
    writes a marker file. `model_type` 'llama' has a built-in class to fall back on; another does not."""
    from unast_core.model.teacher import tiny_random_teacher

    path, marker = tmp_path / "teacher", tmp_path / "remote-code-ran"
    teacher = tiny_random_teacher()
    teacher.model.save_pretrained(path)
    teacher.tokenizer.save_pretrained(path)
    (path / "evil_modeling.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")
        from transformers import LlamaConfig, LlamaForCausalLM

        class EvilConfig(LlamaConfig):
            model_type = {model_type!r}

        class EvilForCausalLM(LlamaForCausalLM):
            config_class = EvilConfig
    """))
    config = json.loads((path / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "evil_modeling.EvilConfig",
                                                   "AutoModelForCausalLM": "evil_modeling.EvilForCausalLM"})
    (path / "config.json").write_text(json.dumps(config))
    return path, marker


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """Where transformers copies remote code to import it: inside tmp_path, not the user's cache."""
    from transformers import dynamic_module_utils

    cache = tmp_path / "hf-modules"
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.syspath_prepend(str(cache))
    yield cache
    for name in [n for n in sys.modules if n.startswith("transformers_modules")]:
        del sys.modules[name]


def test_remote_code_is_off_by_default():
    from unast_core.config import RunConfig, TeacherConfig, build_config

    assert TeacherConfig().trust_remote_code is False and TeacherConfig().allow_pickle is False
    for preset in ("smoke", "cpu", "paper"):
        assert build_config(preset).teacher.trust_remote_code is False
    assert RunConfig().teacher.trust_remote_code is False


@pytest.mark.parametrize("model_type", ["llama", "evil_llama"])
def test_a_teachers_remote_code_does_not_run_by_default(tmp_path, modules_cache, model_type):
    """load_teacher with the default settings never imports the teacher's python file: a known model type loads
    with the built-in class, an unknown one is refused with a one-line error."""
    from unast_core.config import TeacherConfig
    from unast_core.errors import UnastError
    from unast_core.model.teacher import check_teacher_spec, load_teacher

    path, marker = _teacher_with_remote_code(tmp_path, model_type)
    cfg = TeacherConfig(model=str(path))
    if model_type == "llama":
        check_teacher_spec(cfg.model, cfg.trust_remote_code, cfg.allow_pickle)
        teacher = load_teacher(cfg.model, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
        assert type(teacher.model).__module__.startswith("transformers.models.llama")
    else:  # refused before the run starts (its config needs the remote code), and again if loaded directly
        with pytest.raises(UnastError, match="config.json cannot be read"):
            check_teacher_spec(cfg.model, cfg.trust_remote_code, cfg.allow_pickle)
        with pytest.raises(UnastError, match="cannot load a causal LM"):
            load_teacher(cfg.model, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    assert not marker.exists()


def test_the_remote_code_fixture_does_run_when_trusted(tmp_path, modules_cache):
    """The control for the test above: asked to trust it, transformers imports the file and the marker appears."""
    from unast_core.errors import UnastError
    from unast_core.model.teacher import load_teacher

    path, marker = _teacher_with_remote_code(tmp_path, "evil_llama")
    try:
        load_teacher(str(path), trust_remote_code=True)
    except UnastError:
        pass  # loading may stop later; the file has been imported by then
    assert marker.read_text() == "ran"


# --- the exported modeling file -------------------------------------------------------------------------------

MODELING = ROOT / "unast_core" / "model" / "modeling_unast.py"
ALLOWED_IMPORTS = {"torch", "transformers", "typing", "math", "copy", "dataclasses", "__future__"}
IO_NAMES = {"open", "socket", "urllib", "requests", "httpx", "http", "subprocess", "system", "popen", "os", "sys",
            "shutil", "pathlib", "Path", "write_text", "write_bytes", "read_text", "read_bytes", "mkdir", "unlink",
            "rmdir", "touch", "rename", "replace_file", "remove", "save", "load", "exec", "eval", "compile",
            "__import__", "import_module", "urlopen", "connect", "getattr_static", "hf_hub_download", "snapshot_download"}


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def _io_names(tree: ast.AST) -> list[tuple[int, str]]:
    """Names and attributes in IO_NAMES that the code reads or calls."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in IO_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute) and node.attr in IO_NAMES:
            found.append((node.lineno, f".{node.attr}"))
    return found


def test_the_modeling_checks_see_io():
    sample = ast.parse("import os\nfrom pathlib import Path\nPath('x').write_text('y')\nwith open('f') as f: pass\n"
                       "import urllib.request\nurllib.request.urlopen('http://x')\nos.system('ls')\n")
    assert set(_imports(sample)) == {"os", "pathlib", "urllib.request"}
    assert {name for _, name in _io_names(sample)} >= {"Path", ".write_text", "open", "urllib", ".urlopen", ".system"}


def test_the_exported_modeling_file_only_computes():
    """modeling_unast.py is copied into every export and runs wherever the export is loaded with
    trust_remote_code: it imports only torch, transformers and pure standard-library modules, and touches no
    file, process or network."""
    tree = ast.parse(MODELING.read_text(encoding="utf-8"))
    imports = _imports(tree)
    assert "torch" in imports and "transformers" in imports
    assert {name.split(".")[0] for name in imports} <= ALLOWED_IMPORTS, imports
    assert _io_names(tree) == []


# --- servers listen on loopback -------------------------------------------------------------------------------

def test_the_local_dask_cluster_listens_on_loopback(monkeypatch):
    """`--runner dask` (CPU: LocalCluster, GPU: dask-cuda's LocalCUDACluster) binds scheduler and workers to
    loopback and serves no dashboard."""
    import prefect_dask

    from flows import runners
    from unast_core.config import OrchestrationConfig

    runner = runners.task_runner(OrchestrationConfig(runner="dask", workers=2))  # the real one, CPU
    assert runner.cluster_kwargs["host"] in LOOPBACK and runner.cluster_kwargs["dashboard_address"] is None
    made = []
    monkeypatch.setattr(prefect_dask, "DaskTaskRunner", lambda **kwargs: made.append(kwargs))  # dask-cuda absent
    for gpus in (0, 2):
        monkeypatch.setattr(runners, "_gpus", lambda gpus=gpus: gpus)
        runners.task_runner(OrchestrationConfig(runner="dask"))
    assert [kw["cluster_class"].split(".")[0] for kw in made] == ["distributed", "dask_cuda"]
    assert all(kw["cluster_kwargs"]["host"] in LOOPBACK and kw["cluster_kwargs"]["dashboard_address"] is None
               for kw in made)


def test_the_temporary_prefect_server_listens_on_loopback(monkeypatch):
    """shared_api starts Prefect's SubprocessASGIServer; that server runs uvicorn with --host 127.0.0.1."""
    from prefect.server.api import server as prefect_server

    from flows import runners
    from unast_core.config import OrchestrationConfig

    started = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.api_url = "http://127.0.0.1:4299/api"

        def start(self, timeout=None):
            started.append(self)

        def stop(self):
            started.remove(self)

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(prefect_server, "SubprocessASGIServer", Recorder)
    with runners.shared_api(OrchestrationConfig(runner="dask")):
        assert len(started) == 1 and runners.os.environ["PREFECT_API_URL"] == started[0].api_url
    assert started == []
    monkeypatch.undo()

    commands = []
    monkeypatch.setattr(prefect_server.subprocess, "Popen", lambda args, **kwargs: commands.append(args))
    server = prefect_server.SubprocessASGIServer(port=4298)
    server._run_uvicorn_command()
    (args,) = commands
    assert args[args.index("--host") + 1] in LOOPBACK
    assert urlparse(server.api_url).hostname in LOOPBACK


def _starts_mlflow(tree: ast.AST) -> list[int]:
    """Lines that import MLflow's server or run a process whose command line mentions mlflow."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            lines += [node.lineno for m in modules if m.startswith("mlflow.server")]
        elif isinstance(node, ast.Call) and _dotted(node.func).split(".")[0] in {"subprocess", "os", "Popen"}:
            words = [n.value for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Constant)]
            lines += [node.lineno for w in words if isinstance(w, str) and "mlflow" in w]
    return lines


def test_mlflow_is_a_local_file_unless_a_server_is_named_and_unast_starts_none(monkeypatch, tmp_path):
    from tasks import tracking

    uris = []
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "MlflowClient", lambda uri: uris.append(uri) or _NoExperiment())
    tracking.Tracker(tmp_path / "home")
    assert urlparse(uris[0]).scheme == "sqlite" and uris[0].endswith(str(tmp_path / "home" / "mlflow.db"))
    assert _starts_mlflow(ast.parse("import subprocess\nsubprocess.Popen(['mlflow', 'server'])\n")) == [2]
    offenders = [f"{path.relative_to(ROOT)}:{line}" for path in _python_files()
                 for line in _starts_mlflow(ast.parse(path.read_text(encoding="utf-8")))]
    assert not offenders, offenders


class _NoExperiment:
    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name, artifact_location=None):
        return "0"


def test_a_served_deployment_starts_no_webserver():
    """`unast serve` (flows/service.py; `deployments/deploy.py` calls it) serves the flow without the runner's
    webserver (which would bind to Prefect's runner host, loopback by default)."""
    from prefect.settings import get_current_settings

    serve_calls = [node for path in [*sorted((ROOT / "deployments").rglob("*.py")), ROOT / "flows" / "service.py"]
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "serve"]
    assert serve_calls
    for call in serve_calls:
        webserver = _keyword(call, "webserver")
        assert webserver is None or (isinstance(webserver, ast.Constant) and webserver.value is False)
    assert get_current_settings().runner.server.host in LOOPBACK
