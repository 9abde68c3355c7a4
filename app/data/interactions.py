"""Your own data: an interaction log (CSV, or Parquet with the ``parquet`` extra) and an
items file, described by a dataset file (TOML) that maps their columns, read into the same
stream and catalogue the MovieLens presets give (docs/own-data.md).

A dataset file, e.g. ``shop.toml``, paths relative to it::

    name = "shop"
    [log]
    path = "events.csv"
    user = "customer_id"       # column names; these four are required
    item = "sku"
    time = "ts"
    time_unit = "s"            # s, ms or iso (ISO 8601; no zone: UTC)
    type = "event"             # optional: view, add_to_cart, purchase, ...
    value = "rating"           # optional: a rating or other strength
    positive_types = ["purchase"]
    positive_value = 4.0
    [items]
    path = "products.csv"
    id = "sku"
    title = "name"
    text = "description"       # optional from here on
    category = "category"
    brand = "brand"
    price = "price"
    [users]                    # optional: profiles, for new users' first lists
    path = "customers.csv"
    id = "customer_id"
    age_band = "age"           # each optional
    gender = "gender"
    locale = "country"
    occupation = "job"
    attributes = ["tier"]      # further columns kept as free attributes

Every row of the log becomes a ``view`` of its item and, when it is positive (its type is
one of ``positive_types``, or its value is at least ``positive_value``), also a
``purchase``, exactly as a MovieLens rating of 4 or more does; other event types count as
views. Rows are put in time order (ties keep the file's order). A profile is published
before the stream, as a team's CRM would have published it; the worker keeps popularity per
age band, gender, occupation and locale and answers a user with fewer than five events from
their segments' favourites (docs/own-data.md)."""

from __future__ import annotations

import csv
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import msgspec

from app.contract.records import ItemUpsert, UserProfile
from app.data.movielens import Rating
from app.errors import SettingError

POSITIVE, NEUTRAL = 5.0, 1.0   # a row's strength in the stream: positive or not


class DatasetFileError(SettingError):
    """A dataset file or the files it names cannot be read as described (one line, exit 2
    from any command)."""


class LogColumns(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    path: str
    user: str
    item: str
    time: str
    time_unit: Literal["s", "ms", "iso"] = "s"
    type: str | None = None
    value: str | None = None
    positive_types: list[str] = msgspec.field(default_factory=lambda: ["purchase"])
    positive_value: float = 4.0


class ItemColumns(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    path: str
    id: str
    title: str
    text: str | None = None
    category: str | None = None
    brand: str | None = None
    price: str | None = None


class UserColumns(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    path: str
    id: str
    age_band: str | None = None
    gender: str | None = None
    locale: str | None = None
    occupation: str | None = None
    attributes: list[str] = msgspec.field(default_factory=list)


class DatasetFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    log: LogColumns
    items: ItemColumns
    users: UserColumns | None = None


class Dataset(NamedTuple):
    """A dataset file read: its description, catalogue, log as ratings in time order, and
    user profiles (none without a ``[users]`` table)."""

    spec: DatasetFile
    items: list[ItemUpsert]
    ratings: list[Rating]
    profiles: list[UserProfile]


def is_dataset_file(dataset: str) -> bool:
    return dataset.endswith(".toml")


def dataset_name(dataset: str) -> str:
    """A preset's name, or the name a dataset file gives its data (runs, reports, models
    are filed under it)."""
    return read_spec(Path(dataset)).name if is_dataset_file(dataset) else dataset


def read_spec(path: Path) -> DatasetFile:
    try:
        return msgspec.convert(tomllib.loads(path.read_text()), DatasetFile)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise DatasetFileError(f"{path}: {exc}") from exc


def load(path: Path) -> Dataset:
    """The dataset file at ``path`` and the files it names, read."""
    spec = read_spec(path)
    folder = path.parent
    items = [_item(row, spec.items, n) for n, row in
             enumerate(_rows(folder / spec.items.path, _needed(spec.items)))]
    ratings = [_rating(row, spec.log, n) for n, row in
               enumerate(_rows(folder / spec.log.path, _needed(spec.log)))]
    ratings.sort(key=lambda r: r.ts_ms)
    profiles = ([_profile(row, spec.users, n) for n, row in
                 enumerate(_rows(folder / spec.users.path, _needed(spec.users)))]
                if spec.users else [])
    return Dataset(spec, items, ratings, profiles)


def _needed(columns: LogColumns | ItemColumns | UserColumns) -> list[str]:
    skip = {"path", "time_unit", "positive_types", "positive_value"}
    named = [value for name, value in msgspec.structs.asdict(columns).items()
             if name not in skip and isinstance(value, str)]
    return named + (columns.attributes if isinstance(columns, UserColumns) else [])


def _rows(path: Path, needed: list[str]) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, needed)
        return
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DatasetFileError(f"{path}: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetFileError(f"{path}: no column {', '.join(missing)} "
                                   f"(it has {', '.join(reader.fieldnames or [])})")
        yield from reader


def _parquet_rows(path: Path, needed: list[str]) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError as exc:
        raise DatasetFileError(f"{path}: Parquet needs pip install 'streamrec[parquet]'"
                               ) from exc
    table = pq.read_table(path)
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise DatasetFileError(f"{path}: no column {', '.join(missing)}")
    yield from table.to_pylist()


def _time_ms(value: Any, unit: Literal["s", "ms", "iso"], where: str) -> int:
    try:
        if unit == "s":
            return round(float(value) * 1000)
        if unit == "ms":
            return round(float(value))
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        return round((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
    except (TypeError, ValueError) as exc:
        raise DatasetFileError(f"{where}: time {value!r} is not {unit}") from exc


def _rating(row: dict[str, Any], log: LogColumns, n: int) -> Rating:
    where = f"{log.path} row {n + 1}"
    kind = str(row[log.type]) if log.type else ""
    value: float | None = None
    if log.value and row[log.value] not in (None, ""):
        try:
            value = float(row[log.value])
        except ValueError as exc:
            raise DatasetFileError(f"{where}: value {row[log.value]!r} is not a number"
                                   ) from exc
    positive = kind in log.positive_types or (value is not None and value >= log.positive_value)
    # the stream's own notion of positive (a MovieLens rating of 4 or more): 5 or 1
    return Rating(n, str(row[log.user]), str(row[log.item]), POSITIVE if positive else NEUTRAL,
                  _time_ms(row[log.time], log.time_unit, where))


def _item(row: dict[str, Any], columns: ItemColumns, n: int) -> ItemUpsert:
    def text(column: str | None) -> str:
        return str(row[column] or "") if column else ""

    price = text(columns.price)
    try:
        # converted, not constructed: checked against the contract's limits as the worker
        # will check it, so a row the worker would dead-letter is refused here, named
        return msgspec.convert({
            "v": 1, "event_id": f"item-{row[columns.id]}-0", "item_id": str(row[columns.id]),
            "ts": 0, "title": text(columns.title) or str(row[columns.id]),
            "description": text(columns.text), "category": text(columns.category),
            "brand": text(columns.brand), "price": float(price) if price else None,
        }, ItemUpsert)
    except (ValueError, msgspec.ValidationError) as exc:
        raise DatasetFileError(f"{columns.path} row {n + 1}: {exc}") from exc


def _profile(row: dict[str, Any], columns: UserColumns, n: int) -> UserProfile:
    def text(column: str | None) -> str | None:
        value = row[column] if column else None
        return str(value) if value not in (None, "") else None

    try:
        return msgspec.convert({
            "v": 1, "event_id": f"profile-{row[columns.id]}-0", "user_id": str(row[columns.id]),
            "ts": 0, "age_band": text(columns.age_band), "gender": text(columns.gender),
            "locale": text(columns.locale), "occupation": text(columns.occupation),
            "attributes": {name: str(row[name]) for name in columns.attributes
                           if row[name] not in (None, "")},
        }, UserProfile)
    except msgspec.ValidationError as exc:
        raise DatasetFileError(f"{columns.path} row {n + 1}: {exc}") from exc

