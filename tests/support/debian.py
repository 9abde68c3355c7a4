"""Programs from Debian packages for the tests, with no root and no system install: found
on PATH, or fetched once by `apt-get download` (with the listed libraries) and unpacked
into ~/.cache/streamrec/<folder>."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CACHE = Path.home() / ".cache" / "streamrec"


def program(name: str, packages: list[str], folder: str) -> Path:
    """The path of ``name``: on PATH, or unpacked from ``packages`` (the first provides it)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    root = CACHE / folder / "root"
    unpacked = root / "usr" / "bin" / name
    if not unpacked.exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", *packages], cwd=root.parent, check=True,
                       capture_output=True)
        for package in packages:
            deb = sorted(root.parent.glob(f"{package}_*.deb"))[-1]
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return unpacked


def environment(program_path: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` with the program's folder first on PATH and, for an unpacked one, its
    packages' libraries found first."""
    env = {**base, "PATH": os.pathsep.join((str(program_path.parent), base.get("PATH", "")))}
    libraries = program_path.parents[1] / "lib" / "x86_64-linux-gnu"
    if libraries.is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libraries), env.get("LD_LIBRARY_PATH", "")) if p)
    return env
