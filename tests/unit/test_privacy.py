from __future__ import annotations

from app.core.privacy import PREFIX, Pseudonyms


def test_without_a_key_ids_are_kept() -> None:
    assert Pseudonyms("")(b"alice") == b"alice"
    assert not Pseudonyms("").enabled


def test_a_pseudonym_is_stable_keyed_and_not_the_id() -> None:
    one, other = Pseudonyms("k1"), Pseudonyms("k2")
    assert one(b"alice") == one(b"alice")
    assert one(b"alice") != one(b"bob")
    assert one(b"alice") != other(b"alice")       # another key, another pseudonym
    assert one(b"alice").startswith(PREFIX)
    assert b"alice" not in one(b"alice")
    assert len(one(b"x" * 128)) == len(PREFIX) + 32
