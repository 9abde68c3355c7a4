"""The behaviour model's input tokens."""

from __future__ import annotations

from app.core.sequence import GAP_BUCKETS, KINDS, Vocabulary, gap_bucket, tokens

MINUTE = 60_000


def test_gap_buckets_grow_by_doubling_and_are_bounded() -> None:
    assert gap_bucket(None) == 1
    assert gap_bucket(0) == gap_bucket(59_999) == 2
    assert gap_bucket(MINUTE) == 3
    assert gap_bucket(2 * MINUTE) == gap_bucket(3 * MINUTE) == 4
    assert gap_bucket(60 * MINUTE) == 3 + 5
    assert gap_bucket(10**15) == GAP_BUCKETS - 1


def test_histories_become_left_padded_aligned_arrays() -> None:
    view, buy = KINDS["view"], KINDS["purchase"]
    batch = tokens([[(5, view, 0), (7, buy, 30 * MINUTE)], [(1, view, 0), (2, view, 1),
                                                           (3, view, 2 * MINUTE)]], 2)
    assert batch.items.tolist() == [[5, 7], [2, 3]]
    assert batch.kinds.tolist() == [[view, buy], [view, view]]
    # the first row's first event has no predecessor; the second row's kept events do
    assert batch.gaps.tolist() == [[1, gap_bucket(30 * MINUTE)], [2, gap_bucket(2 * MINUTE - 1)]]
    short = tokens([[(9, view, 0)]], 3)
    assert short.items.tolist() == [[0, 0, 9]]
    assert short.gaps.tolist() == [[0, 0, 1]]


def test_the_vocabulary_reserves_zero_for_padding_and_unknown_items() -> None:
    vocabulary = Vocabulary(["a", "b"])
    assert (vocabulary.of("a"), vocabulary.of("b"), vocabulary.of("zz")) == (1, 2, 0)
    assert len(vocabulary) == 2
