"""Datasets in the generic format (app.data.interactions), written for the tests: MovieLens
exported as a user would export their own log, and small generated shops."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from app.data import movielens


def movielens_as_log(name: str, folder: Path) -> Path:
    """``name`` as a CSV log (user, item, unix seconds, rating), a CSV items file (its text
    as the preset gives it) and a CSV users file, with the dataset file that maps them."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "ratings.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["user", "movie", "when", "stars"])
        for r in sorted(movielens.ratings(name), key=lambda r: r.row):
            out.writerow([r.user_id, r.item_id, r.ts_ms // 1000, r.rating])
    with (folder / "movies.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["movie", "title", "genre"])
        for m in movielens.movies(name):
            title = f"{m.title} ({m.year})" if m.year else m.title
            out.writerow([m.item_id, title, m.genres[0].lower() if m.genres else ""])
    with (folder / "people.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["user", "age", "sex", "job"])
        for person in movielens.users(name):
            out.writerow([person.user_id, person.age, person.gender, person.occupation])
    spec = folder / f"{name}.toml"
    spec.write_text(f'''name = "{name}-log"
[log]
path = "ratings.csv"
user = "user"
item = "movie"
time = "when"
value = "stars"
[items]
path = "movies.csv"
id = "movie"
title = "title"
category = "genre"
[users]
path = "people.csv"
id = "user"
age_band = "age"
gender = "sex"
occupation = "job"
''')
    return spec


def generated_shop(folder: Path, users: int = 150, items: int = 60, events: int = 20,
                   seed: int = 0) -> Path:
    """A shop whose users each browse one of a few aisles in turn (so what comes next is
    learnable), with ISO times and event types, and a profile (country, tier) for every
    other customer; its dataset file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    aisles = ["garden", "kitchen", "toys"]
    with (folder / "products.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["sku", "name", "about", "aisle", "price"])
        for n in range(items):
            aisle = aisles[n % len(aisles)]
            out.writerow([f"p{n}", f"{aisle.title()} thing {n}", f"A useful {aisle} product",
                          aisle, f"{1 + n % 7}.99"])
    with (folder / "events.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["customer", "sku", "at", "kind"])
        for u in range(users):
            aisle = u % len(aisles)
            start = int(rng.integers(0, 10_000))
            for e in range(events):
                n = (aisle + len(aisles) * int(rng.integers(0, items // len(aisles)))) % items
                kind = rng.choice(["view", "view", "add_to_cart", "purchase"])
                minute = start + e * 7
                out.writerow([f"c{u}", f"p{n}", f"2026-01-{1 + minute // 1440:02d}T"
                              f"{minute // 60 % 24:02d}:{minute % 60:02d}:00", kind])
    with (folder / "customers.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["customer", "country", "tier"])
        for u in range(0, users, 2):
            out.writerow([f"c{u}", ["fr", "de", "pl"][u % 3], "gold" if u % 4 == 0 else ""])
    spec = folder / "shop.toml"
    spec.write_text('''name = "shop"
[log]
path = "events.csv"
user = "customer"
item = "sku"
time = "at"
time_unit = "iso"
type = "kind"
[items]
path = "products.csv"
id = "sku"
title = "name"
text = "about"
category = "aisle"
price = "price"
[users]
path = "customers.csv"
id = "customer"
locale = "country"
attributes = ["tier"]
''')
    return spec
