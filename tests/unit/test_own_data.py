"""Your own data: a CSV or Parquet log and items file, described by a dataset file, read
into the same split the MovieLens presets give."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from app.data.interactions import DatasetFileError, load
from app.evaluation.split import catalogue_records, profile_records
from app.evaluation.split import load as load_split
from tests.support.own_data import generated_shop, movielens_as_log


def test_movielens_through_the_generic_path_is_the_preset(tmp_path: Path) -> None:
    preset = load_split("ml-100k")
    mine = load_split(str(movielens_as_log("ml-100k", tmp_path)))
    assert mine.dataset == "ml-100k-log"
    assert [(r.user_id, r.item_id, r.ts_ms, r.rating >= 4) for r in mine.stream] == \
        [(r.user_id, r.item_id, r.ts_ms, r.rating >= 4) for r in preset.stream]
    assert mine.targets == preset.targets
    assert mine.history == preset.history
    assert mine.items == preset.items
    # the catalogue the worker embeds: the same text (title, first genre as category)
    ours = {u.item_id: (u.title, u.category) for u in mine.catalogue}
    theirs = {u.item_id: (u.title, u.category) for u in preset.catalogue}
    assert ours == theirs
    assert catalogue_records(mine, 5)[0][2] == mine.items[0]
    # the profiles the replay publishes before the stream: the same
    assert mine.profiles == preset.profiles
    assert len(preset.profiles) == 943
    assert profile_records(mine, 5) == profile_records(preset, 5)


def test_a_shop_log_with_types_and_iso_times(tmp_path: Path) -> None:
    spec, items, ratings, profiles = load(generated_shop(tmp_path, users=10, events=5))
    assert spec.name == "shop"
    assert len(items) == 60
    assert items[0].price == 1.99
    assert items[0].description == "A useful garden product"
    assert len(ratings) == 50
    assert [r.ts_ms for r in ratings] == sorted(r.ts_ms for r in ratings)
    kinds = {}
    with (tmp_path / "events.csv").open() as handle:
        for n, row in enumerate(csv.DictReader(handle)):
            kinds[n] = row["kind"]
    # a purchase is positive (a view and a purchase in the stream), the rest views
    assert all((r.rating >= 4) == (kinds[r.row] == "purchase") for r in ratings)
    assert ratings[0].ts_ms % 60_000 == 0
    # every other customer has a profile; an empty attribute cell is no attribute
    assert [(p.user_id, p.locale, p.attributes) for p in profiles[:2]] == \
        [("c0", "fr", {"tier": "gold"}), ("c2", "pl", {})]
    assert len(profiles) == 5
    assert profiles[0].age_band is None


def test_a_dataset_without_users_has_no_profiles(tmp_path: Path) -> None:
    spec = generated_shop(tmp_path, users=3, events=2)
    text = spec.read_text()
    spec.write_text(text[:text.index("[users]")])
    assert load(spec).profiles == []


def test_parquet_reads_as_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    spec = generated_shop(tmp_path, users=10, events=5)
    pq.write_table(pacsv.read_csv(tmp_path / "events.csv",
                                  convert_options=pacsv.ConvertOptions(
                                      column_types={"at": pa.string()})),
                   tmp_path / "events.parquet")
    as_parquet = tmp_path / "parquet.toml"
    as_parquet.write_text(spec.read_text().replace("events.csv", "events.parquet"))
    assert load(as_parquet)[2] == load(spec)[2]


@pytest.mark.parametrize(("change", "says"), [
    (("user = \"customer\"", "user = \"client\""), "no column client"),
    (("time_unit = \"iso\"", "time_unit = \"s\""), "is not s"),
    (("path = \"events.csv\"", "path = \"missing.csv\""), "No such file"),
    (("name = \"shop\"", "nom = \"shop\""), "unknown field `nom`"),
    (("attributes = [\"tier\"]", "attributes = [\"level\"]"), "no column level"),
])
def test_a_wrong_dataset_file_says_what_and_where(tmp_path: Path, change: tuple[str, str],
                                                  says: str) -> None:
    spec = generated_shop(tmp_path, users=3, events=2)
    spec.write_text(spec.read_text().replace(*change))
    with pytest.raises(DatasetFileError, match=says):
        load(spec)
