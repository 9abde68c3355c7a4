"""Behaviour models on the models topic: published in chunks, put together again by a
follower in any order, checked against their hash, rolled back, and bounded on the topic."""

from __future__ import annotations

import random

import pytest

from app.core.artefacts import (
    HEAD_KEY,
    ArtefactStore,
    BehaviourHead,
    IncompleteArtefactError,
    deletions,
    encode_head,
    publication,
    to_delete,
)

FILES = {"manifest.json": b'{"kind": "behaviour-model"}', "user.onnx": bytes(range(256)) * 40,
         "items.npy": b"\x01" * 3_000}


def _publish(version: str, at: int, previous: str = "", chunk_bytes: int = 1_000
             ) -> list[tuple[bytes, bytes | None]]:
    _, records = publication(version, FILES, at, f"note {version}", chunk_bytes=chunk_bytes)
    head = BehaviourHead(version=version, previous=previous, published_at=at)
    return [*records, (HEAD_KEY, encode_head(head))]


def test_a_model_cut_in_chunks_is_put_together_again_in_any_order() -> None:
    records = _publish("v1", 1)
    assert len(records) > 10                      # 13 kB in 1 kB chunks, manifest, head
    assert all(len(v or b"") <= 1_000 for k, v in records if b"/" in k)
    for seed in range(5):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        store = ArtefactStore()
        servable = []
        for key, value in shuffled:
            asked = store.apply(key, value)
            servable.append((store.served() == "v1" and store.complete("v1"), asked))
        first = next(n for n, (ready, _) in enumerate(servable) if ready)
        assert servable[first][1]                  # a swap is asked for once it can be done
        assert store.files("v1") == FILES


def test_the_head_waits_for_every_chunk_and_a_wrong_byte_is_refused() -> None:
    records = _publish("v1", 1)
    store = ArtefactStore()
    store.apply(*records[-1])                      # the head first
    with pytest.raises(IncompleteArtefactError):
        store.files("v1")
    for key, value in records[1:-1]:
        assert not store.apply(key, value) or key == records[-2][0]
    assert not store.complete("v1")                # chunk 0 still missing
    assert store.apply(*records[0])                # the last part: now it can be served
    assert store.files("v1") == FILES
    key, value = records[3]
    assert value is not None
    store.apply(key, bytes([value[0] ^ 1]) + value[1:])
    with pytest.raises(ValueError, match="SHA-256"):
        store.files("v1")


def test_rollback_goes_to_the_model_replaced_or_none_and_old_versions_are_deleted() -> None:
    store = ArtefactStore()
    for key, value in [*_publish("v1", 1), *_publish("v2", 2, "v1"), *_publish("v3", 3, "v2")]:
        store.apply(key, value)
    assert store.served() == "v3"
    assert store.rollback_target() == "v2"
    assert store.rollback_target("v1") == "v1"
    assert store.rollback_target("none") == ""
    with pytest.raises(LookupError, match="kept: v1, v2, v3"):
        store.rollback_target("v0")
    # a fourth version: the oldest not served nor replaced goes, with every chunk of it
    artefact, records = publication("v4", FILES, 4)
    kept = {**store.artefacts, "v4": artefact}
    stale = to_delete(kept, {"v4", "v3"}, keep=3)
    assert [a.version for a in stale] == ["v1"]
    for key, value in [*records, *deletions(stale[0])]:
        store.apply(key, value)
    assert sorted(store.artefacts) == ["v2", "v3", "v4"]
    assert "v1" not in store.chunks
    store.apply(HEAD_KEY, None)                    # a deleted head: nothing served
    assert store.served() == ""


def test_a_new_model_is_published_only_when_it_beats_the_served_one_on_validation() -> None:
    from app.core.artefacts import publish_verdict

    served = {"dataset": "ml-1m", "valid_ndcg@10": 0.170}
    assert publish_verdict({"dataset": "ml-1m", "valid_ndcg@10": 0.18}, None)[0]
    assert publish_verdict({"dataset": "ml-1m", "valid_ndcg@10": 0.18}, served)[0]
    worse = publish_verdict({"dataset": "ml-1m", "valid_ndcg@10": 0.165}, served)
    assert worse == (False, "valid_ndcg@10 0.1650 does not beat the served 0.1700")
    assert not publish_verdict({"dataset": "ml-100k", "valid_ndcg@10": 0.5}, served)[0]
    assert not publish_verdict({"dataset": "ml-1m"}, served)[0]      # exported before the gate
