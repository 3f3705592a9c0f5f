"""Store housekeeping: what the store holds (`du`) and what can go (`gc`).

A store's work is split into units, the pieces a run reuses or recomputes as a whole: one capture
(`activations/<key>/<split>/`), one student (`train/<key>/`), one exported checkpoint (`final/<stem>/`), and
elsewhere the files that share a stem (`candidates/<sublayer>/<name>-<key>.{json,safetensors}`,
`search/<key>.{json,arch1.png}`, ...), with their checksum sidecars.

A unit's last use is the newest modification time of its checksum sidecars: every read and every reuse
check touches them (`integrity.problem`). A unit with no sidecar at all was written before UNAST recorded
use; `gc` keeps such units unless asked to take their write time as their last use.

`gc` keeps every unit used since a cutoff (the start of the N-th latest run, or of the run that made an
export) and deletes the rest, each under the unit's lock (`locks.unit_lock`), so a run that is computing
or reading it is waited for. Deleting replaces nothing in place: a file hard-linked elsewhere (an export
in an output directory) keeps its other link, and only space no other link holds counts as freed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from unast_core import integrity
from unast_core.locks import unit_lock

DIR_UNITS = {"activations": 2, "train": 1, "final": 1}  # stage -> depth of the directory that is one unit


@dataclass
class Unit:
    path: Path                      # the unit's directory, or its stem (path without suffix) for file units
    stage: str
    files: list[Path] = field(default_factory=list)
    last_use: float = 0.0
    recorded: bool = False          # has use records (checksum sidecars)

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def _files(directory: Path) -> list[Path]:
    return [p for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()]


def _is_lock(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".lock")


def units(run_dir: Path) -> list[Unit]:
    """Every unit of one teacher's run directory."""
    found: list[Unit] = []
    for stage_dir in sorted(p for p in Path(run_dir).iterdir() if p.is_dir()):
        stage = stage_dir.name
        if stage in DIR_UNITS:
            pattern = "/".join(["*"] * DIR_UNITS[stage])
            for directory in sorted(p for p in stage_dir.glob(pattern) if p.is_dir() and not p.name.startswith(".")):
                found.append(_unit(directory, stage, [f for f in _files(directory) if not _is_lock(f)]))
            continue
        groups: dict[Path, list[Path]] = defaultdict(list)
        for path in _files(stage_dir):
            if _is_lock(path) or path.name.endswith(".tmp"):
                continue
            name = path.name[1:-len(integrity.SIDECAR_SUFFIX)] if integrity.is_sidecar(path) else path.name
            groups[path.parent / name.split(".")[0]].append(path)
        found += [_unit(stem, stage, files) for stem, files in sorted(groups.items())]
    return found


def _unit(path: Path, stage: str, files: list[Path]) -> Unit:
    sidecars = [f for f in files if integrity.is_sidecar(f)]
    times = [f.stat().st_mtime for f in (sidecars or files)]
    return Unit(path=path, stage=stage, files=files, last_use=max(times, default=0.0), recorded=bool(sidecars))


def _teacher_name(run_dir: Path) -> str:
    for results in sorted(run_dir.glob("final/*/results.json")):
        try:
            return json.loads(results.read_text()).get("teacher_source") or "?"
        except (OSError, ValueError):
            continue
    return "?"


def du(home: Path) -> dict:
    """Bytes by teacher and stage (each inode counted once), plus MLflow's database and artifacts."""
    home = Path(home)
    seen: set[tuple[int, int]] = set()

    def size_of(paths) -> int:
        total = 0
        for path in paths:
            st = path.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
        return total

    teachers = []
    for run_dir in sorted(p for p in (home / "runs").glob("*") if p.is_dir()):
        stages = {stage.name: size_of(_files(stage)) for stage in sorted(p for p in run_dir.iterdir() if p.is_dir())}
        teachers.append({"fingerprint": run_dir.name, "teacher": _teacher_name(run_dir), "stages": stages,
                         "total": sum(stages.values())})
    other = {p.name: size_of(_files(p) if p.is_dir() else [p]) for p in sorted(home.iterdir())
             if p.name != "runs"} if home.exists() else {}
    return {"home": str(home), "teachers": teachers, "other": other,
            "total": sum(t["total"] for t in teachers) + sum(other.values())}


def gc(home: Path, cutoff: float, dry_run: bool = True, unrecorded: str = "keep") -> dict:
    """Delete the units not used since `cutoff` (a Unix time). `unrecorded`: "keep" the units with no use
    record, or "drop" them when their write time is before the cutoff. Returns what goes and what it frees."""
    doomed: list[Unit] = []
    kept_unrecorded = 0
    for run_dir in sorted(p for p in (Path(home) / "runs").glob("*") if p.is_dir()):
        for unit in units(run_dir):
            if unit.last_use >= cutoff:
                continue
            if not unit.recorded and unrecorded == "keep":
                kept_unrecorded += 1
                continue
            doomed.append(unit)
    # space is freed only where every link of an inode goes
    links: dict[tuple[int, int], list] = {}
    for unit in doomed:
        for path in unit.files:
            st = path.stat()
            links.setdefault((st.st_dev, st.st_ino), [st.st_nlink, st.st_size, 0])[2] += 1
    freed = sum(size for nlink, size, going in links.values() if going >= nlink)
    linked = sum(size for nlink, size, going in links.values() if going < nlink)
    by_stage: dict[str, int] = defaultdict(int)
    for unit in doomed:
        by_stage[unit.stage] += unit.size()
    if not dry_run:
        for unit in doomed:
            with contextlib.ExitStack() as held:  # the unit's lock, and each file's (a task locks either)
                for lock in [unit.path] + ([] if unit.path.is_dir() else
                                           [f for f in unit.files if not integrity.is_sidecar(f)]):
                    held.enter_context(unit_lock(lock))
                if unit.path.is_dir():
                    shutil.rmtree(unit.path, ignore_errors=True)
                else:
                    for path in unit.files:
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
    return {"units": [str(u.path) for u in doomed], "by_stage": dict(by_stage), "freed": freed,
            "linked_elsewhere": linked, "kept_unrecorded": kept_unrecorded, "dry_run": dry_run}
