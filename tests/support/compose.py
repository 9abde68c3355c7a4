"""`docker compose` for the tests: the docker CLI is installed on this kind of machine but
its compose plugin is not, and no engine runs. `config` needs no engine, so the plugin is
built once from the Go module proxy (Docker Compose v2, pinned) into ~/.cache/streamrec and
handed to the docker CLI through a private DOCKER_CONFIG folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

COMPOSE_VERSION = "v2.40.3"
CACHE = Path.home() / ".cache" / "streamrec" / f"docker-compose-{COMPOSE_VERSION}"


def plugin() -> Path:
    built = CACHE / "docker-compose"
    if built.exists():
        return built
    go = shutil.which("go") or "/usr/local/go/bin/go"
    CACHE.mkdir(parents=True, exist_ok=True)
    module = f"github.com/docker/compose/v2@{COMPOSE_VERSION}"
    listing = subprocess.run([go, "mod", "download", "-json", module], check=True,
                             capture_output=True, text=True).stdout
    source_dir = Path(listing.split('"Dir": "')[1].split('"')[0])
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "compose"
        shutil.copytree(source_dir, source)
        # `go install module@version` refuses this module (its go.mod has exclude
        # directives), so build inside a writable copy of it
        for path in source.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        subprocess.run([go, "build", "-o", str(built), "./cmd"], cwd=source, check=True,
                       capture_output=True)
    return built


def docker_compose(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as config:
        plugins = Path(config) / "cli-plugins"
        plugins.mkdir()
        (plugins / "docker-compose").symlink_to(plugin())
        return subprocess.run(["docker", "compose", *args], cwd=cwd, capture_output=True,
                              text=True, check=False,
                              env={**os.environ, "DOCKER_CONFIG": config})
