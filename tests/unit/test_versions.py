"""Rollback: a significantly worse new version goes, noise does not flip the ranker."""

from __future__ import annotations

import pytest

from app.core.learning import LearnerState
from app.core.ranking import RankerParams
from app.core.versions import (
    HEAD,
    ModelVersion,
    Registry,
    Traffic,
    as_params,
    checkpoint_key,
    compare,
    decode_version,
    encode_version,
    generation_of,
    learner_of,
)


def test_a_significantly_worse_version_is_rolled_back() -> None:
    old = Traffic(impressions=20_000, clicks=1_000)              # 5.0%
    verdict = compare(Traffic(impressions=20_000, clicks=800), old)   # 4.0%
    assert verdict.roll_back
    assert verdict.z < -2.33
    assert not compare(Traffic(impressions=20_000, clicks=980), old).roll_back   # noise
    assert not compare(Traffic(impressions=20_000, clicks=1_200), old).roll_back  # better
    early = compare(Traffic(impressions=300, clicks=0), old)
    assert not early.roll_back
    assert early.reason == "not enough impressions yet"
    assert not compare(Traffic(5_000, 0), Traffic(5_000, 0)).roll_back


def test_against_a_control_only_the_relative_drop_counts() -> None:
    from app.core.versions import compare_with_control

    old, old_control = Traffic(20_000, 1_000), Traffic(20_000, 1_000)      # 5% both
    drift = compare_with_control(Traffic(20_000, 600), Traffic(20_000, 600), old, old_control)
    assert not drift.roll_back                       # both fell to 3%: the traffic changed
    worse = compare_with_control(Traffic(20_000, 600), Traffic(20_000, 1_000), old,
                                 old_control)
    assert worse.roll_back                           # the control held at 5%: the model
    assert worse.z < -2.33
    early = compare_with_control(Traffic(500, 0), Traffic(20_000, 1_000), old, old_control)
    assert early.reason == "not enough impressions yet"


def test_the_registry_follows_head_and_checkpoints_of_the_models_topic() -> None:
    registry = Registry()
    v = {g: ModelVersion(version=f"learning-{g}.3", generation=g, weights=(1.0,) * 5)
         for g in (1, 2, 3)}
    for g in (1, 2):
        assert registry.apply(checkpoint_key(g), encode_version(v[g])) is None
    head = registry.apply(HEAD, encode_version(v[3]))
    assert head == v[3]
    assert registry.head == v[3]
    assert registry.rollback_target() == v[2]          # the newest older checkpoint
    assert registry.rollback_target("learning-1.3") == v[1]
    assert registry.rollback_target("learning-9.9") is None
    registry.apply(checkpoint_key(2), None)              # a tombstone forgets it
    assert registry.rollback_target() == v[1]
    assert registry.apply(None, b"x") is None
    assert registry.applied == 5


def test_versions_name_their_generation() -> None:
    assert generation_of("learning-12.40") == 12
    assert generation_of("default-2") is None
    version = ModelVersion(version="learning-1.1", generation=1, weights=(1.0, 2.0, 0.0, 0.0,
                                                                          0.5), bias=-1.0)
    assert decode_version(encode_version(version)) == version
    learner = learner_of(version, LearnerState.from_params(RankerParams()))
    assert learner.weights.tolist()[:5] == [1.0, 2.0, 0.0, 0.0, 0.5]   # then the priors
    assert learner.bias == -1.0
    assert as_params(version, RankerParams()).covisit == 2.0


def test_a_tuned_projection_travels_as_float16_and_is_served_with_its_version() -> None:
    import numpy as np

    from app.core.versions import decode_projection, encode_projection, projection_key

    w1 = np.arange(16, dtype=np.float32).reshape(4, 4) / 8
    registry = Registry()
    registry.apply(projection_key("p1"), encode_projection(w1))
    assert np.array_equal(registry.projections["p1"], w1)      # exact in float16 here
    head = ModelVersion(version="tuned-p1", generation=0, weights=(1.0,) * 5,
                        projection="p1", origin="tune")
    registry.apply(HEAD, encode_version(head))
    params = as_params(head, RankerParams(), registry.projections[head.projection])
    assert params.w1 is not None
    assert params.version == "tuned-p1"
    assert as_params(head, RankerParams()).w1 is None
    registry.apply(projection_key("p1"), None)
    assert registry.projections == {}
    with pytest.raises(ValueError, match="square"):
        decode_projection(b"\x00" * 6)
