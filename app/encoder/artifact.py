"""The encoder artifact on disk: a folder with model.onnx, tokenizer.json, LICENSE, NOTICE
and manifest.json, whose `files` section pins the sha256 of every other file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in ``folder`` except the manifest."""
    return {
        path.name: {"sha256": sha256(path), "bytes": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(folder: Path, fields: dict[str, Any]) -> dict[str, Any]:
    manifest = {**fields, "files": file_hashes(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def verify(folder: Path) -> list[str]:
    """Problems with the artifact in ``folder`` (empty when every file matches)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return [f"{manifest_path} is missing"]
    listed = json.loads(manifest_path.read_text()).get("files", {})
    problems = []
    actual = file_hashes(folder)
    for name, entry in listed.items():
        if name not in actual:
            problems.append(f"{name} is listed but missing")
        elif actual[name]["sha256"] != entry["sha256"]:
            problems.append(f"{name} does not match its sha256")
    problems.extend(f"{name} is not listed" for name in actual if name not in listed)
    return problems
