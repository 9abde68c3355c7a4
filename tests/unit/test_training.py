"""The trainer: examples become versions, generations close, a worse one is rolled back."""

from __future__ import annotations

import numpy as np

from app.core.learning import FEATURES, LearnerConfig, LearnerState
from app.core.ranking import RankerParams
from app.core.training import Batch, TrainerConfig, adopt, merge, start, step
from app.core.versions import CONTROL, HEAD, ModelVersion, checkpoint_key, decode_version

PRIOR = LearnerState.from_params(RankerParams())
F = len(FEATURES)


def wide(*weights: float) -> np.ndarray:
    """Weights for the first features, 0 for the rest."""
    return np.array(list(weights) + [0.0] * (F - len(weights)))


def examples(rng: np.random.Generator, truth: np.ndarray, n: int, produced_at: int = 0
             ) -> Batch:
    x = rng.uniform(size=(n, len(FEATURES)))
    clicked = rng.uniform(size=n) < 1 / (1 + np.exp(-(x @ truth - 3.0)))
    return Batch(features=[tuple(row) for row in x], rewards=clicked.astype(float).tolist(),
                 weights=[1.0] * n, produced_at=produced_at)


def test_rewards_become_versions_that_converge_on_the_known_answer() -> None:
    rng = np.random.default_rng(0)
    truth = wide(3.0, 2.0, 0.0, 0.5, 0.0)
    config = TrainerConfig(learner=LearnerConfig(l2=0.0), min_impressions=10**9)
    trainer = start(config, PRIOR, None, {}, now=0)
    heads = []
    for n in range(3000):
        trainer, out, verdict = step(trainer, examples(rng, truth, 64, produced_at=n), now=n)
        assert verdict is None
        assert [key for key, _ in out] == [HEAD]
        heads.append(decode_version(out[0][1] or b""))
    assert [h.version for h in heads[:2]] == ["learning-1.1", "learning-1.2"]
    assert heads[-1].reward_at == 2999
    assert heads[-1].seen == 3000 * 64
    weights = np.array(heads[-1].weights)
    assert float(weights @ truth / np.linalg.norm(weights) / np.linalg.norm(truth)) > 0.98


def traffic(version: str, shown: int, clicks: int) -> Batch:
    return Batch(shown={version: shown}, clicks={version: clicks})


def test_a_generation_with_significantly_fewer_clicks_is_rolled_back() -> None:
    rng = np.random.default_rng(1)
    truth = wide(1.0, 1.0, 0.0, 0.0, 0.0)
    config = TrainerConfig(min_impressions=5_000, keep=5)
    trainer = start(config, PRIOR, None, {}, now=0)
    ctr = {1: 0.10, 2: 0.10, 3: 0.05, 4: 0.10}       # generation 3 is worse
    published: list[tuple[bytes, bytes | None]] = []
    verdicts = []
    for generation in (1, 2, 3, 4):
        assert trainer.generation == generation
        trainer, out, _ = step(trainer, examples(rng, truth, 32), now=generation)
        version = trainer.head.version
        assert version == f"learning-{generation}.1"
        trainer, more, verdict = step(
            trainer, traffic(version, 6_000, int(6_000 * ctr[generation])), now=generation)
        published += out + more
        verdicts.append(verdict)
    # generation 2 judged against 1 when 3 closed (not worse); 3 against 2 when 4 closed
    assert verdicts[0] is None
    assert verdicts[1] is None
    assert verdicts[2] is not None
    assert not verdicts[2].roll_back
    assert verdicts[3] is not None
    assert verdicts[3].roll_back
    assert verdicts[3].z < -2.33
    head = trainer.head
    assert head.origin == "rollback"
    assert head.version == "learning-5.0"
    restored = decode_version(dict(published)[checkpoint_key(2)] or b"")
    assert head.weights == restored.weights
    assert "learning-2.1" in head.note
    assert set(trainer.checkpoints) == {1, 2}        # 3 and 4 descend from the bad one
    assert (checkpoint_key(3), None) in published
    assert (checkpoint_key(4), None) in published
    assert published[-1] == (HEAD, published[-1][1])
    assert trainer.parent[5] == 2                    # judged against what it came back to


def test_a_rollback_by_command_is_adopted_and_trained_on() -> None:
    rng = np.random.default_rng(2)
    trainer = start(TrainerConfig(), PRIOR, None, {}, now=0)
    trainer, _, _ = step(trainer, examples(rng, np.ones(F), 16), now=1)
    command = ModelVersion(version="learning-0.9", generation=0, weights=(0.5,) * 5,
                           published_at=7, origin="command")
    trainer = adopt(trainer, command)
    assert trainer.adopted_at == 7
    assert trainer.generation == 2
    assert trainer.learner.weights.tolist()[:5] == [0.5] * 5
    trainer, out, _ = step(trainer, examples(rng, np.ones(F), 16), now=8)
    assert decode_version(out[0][1] or b"").version == "learning-2.1"


def test_a_trainer_resumes_from_the_topic() -> None:
    head = ModelVersion(version="learning-4.7", generation=4, weights=(2.0,) * 5, steps=90)
    checkpoint = ModelVersion(version="learning-3.5", generation=3, weights=(1.0,) * 5)
    trainer = start(TrainerConfig(), PRIOR, head, {3: checkpoint}, now=0)
    assert trainer.generation == 5
    assert trainer.parent[5] == 4
    assert trainer.learner.steps == 90
    # a version from before the newer features: they resume at their prior
    assert trainer.learner.weights.tolist() == [2.0] * 5 + PRIOR.prior[5:].tolist()
    assert trainer.learner.prior.tolist() == PRIOR.prior.tolist()


def test_records_merge_into_one_mini_batch() -> None:
    merged = merge([Batch(features=[(1.0,) * 5], rewards=[1.0], weights=[2.0],
                          clicks={"learning-1.1": 1}, produced_at=5),
                    Batch(shown={"learning-1.1": 10, "learning-1.2": 10}),
                    Batch(features=[(0.0,) * 5], rewards=[0.0], weights=[1.0],
                          shown={"learning-1.1": 10}, produced_at=3)])
    assert merged.rewards == [1.0, 0.0]
    assert merged.weights == [2.0, 1.0]
    assert merged.shown == {"learning-1.1": 20, "learning-1.2": 10}
    assert merged.clicks == {"learning-1.1": 1}
    assert merged.produced_at == 5


def test_a_drop_the_control_shows_too_is_the_traffic_not_the_model() -> None:
    rng = np.random.default_rng(3)
    trainer = start(TrainerConfig(min_impressions=5_000), PRIOR, None, {}, now=0)
    verdicts = []
    for generation, base in zip((1, 2, 3, 4), (0.10, 0.10, 0.05, 0.05), strict=True):
        trainer, _, _ = step(trainer, examples(rng, np.ones(F), 16), now=generation)
        version = trainer.head.version
        batch = Batch(shown={version: 6_000, CONTROL: 6_000},
                      clicks={version: int(6_000 * base), CONTROL: int(6_000 * base)})
        trainer, _, verdict = step(trainer, batch, now=generation)
        verdicts.append(verdict)
    # generation 3 clicked half as much as 2, and so did the control at the same time
    assert verdicts[3] is not None
    assert not verdicts[3].roll_back
    assert "control" in verdicts[3].reason
    assert trainer.head.origin == "trainer"


class _Catalogue:
    """Four items on the axes of a 4-d space (app.core.catalogue.VectorIndex's contract)."""

    def __init__(self) -> None:
        from app.core.catalogue import VectorIndex

        self.index = VectorIndex(4)
        for n in range(4):
            self.index.upsert(f"i{n}", np.eye(4, dtype=np.float32)[n])

    def softmax_set(self, targets, negatives, seed):  # type: ignore[no-untyped-def]
        return self.index.softmax_set(targets, negatives, seed)


def pairs(n: int, produced_at: int = 0) -> Batch:
    """Users interested in item i take item i+1 next."""
    before = np.arange(n) % 4
    queries = [np.eye(4, dtype="<f2")[i].tobytes() for i in before]
    return Batch(queries=queries, targets=[f"i{(i + 1) % 4}" for i in before],
                 produced_at=produced_at)


def test_pairs_teach_the_projection_which_is_published_at_most_every_interval() -> None:
    from app.core.tuning import OnlineConfig
    from app.core.versions import decode_projection, projection_key

    config = TrainerConfig(projection=OnlineConfig(learning_rate=0.5), min_impressions=10**9,
                           projection_every_ms=1_000)
    trainer = start(config, PRIOR, None, {}, now=0)
    catalogue = _Catalogue()
    records: list[tuple[bytes, bytes | None]] = []
    for now in range(0, 3_000, 100):                # 30 mini-batches over 3 s
        trainer, out, _ = step(trainer, pairs(8, produced_at=now), now=now, catalogue=catalogue)
        records += out
    names = [key for key, value in records if key.startswith(b"projection:") and value]
    # at 0, 1 and 2 s; without rewards a version is published with each projection only
    assert names == [projection_key(f"online-1.{s}") for s in (1, 2, 3)]
    heads = [decode_version(v or b"") for k, v in records if k == HEAD]
    assert [h.projection for h in heads] == ["online-1.1", "online-1.2", "online-1.3"]
    assert heads[-1].weights == heads[0].weights    # no rewards: the ranker did not move
    assert trainer.m_pairs == 30 * 8
    # superseded projections are deleted once nothing names them
    assert (projection_key("online-1.1"), None) in records
    assert (projection_key("online-1.2"), None) in records
    assert set(trainer.projections) == {"online-1.3"}
    w1 = decode_projection(dict(records)[projection_key("online-1.3")] or b"")
    scores = w1 @ np.eye(4, dtype=np.float32)       # W1 u for u on each axis, . each item
    assert (scores.T.argmax(axis=1) == [1, 2, 3, 0]).all()   # the next item ranks first
    # pairs with an unknown item or a vector of another width are left out
    odd = Batch(queries=[np.ones(3, dtype="<f2").tobytes(), np.eye(4, dtype="<f2")[0].tobytes()],
                targets=["i1", "unknown"])
    assert step(trainer, odd, now=5_000, catalogue=catalogue)[0].m_pairs == trainer.m_pairs


def test_a_rollback_restores_the_projection_of_the_checkpoint() -> None:
    from app.core.tuning import OnlineConfig

    rng = np.random.default_rng(4)
    config = TrainerConfig(projection=OnlineConfig(learning_rate=0.5), min_impressions=5_000,
                           projection_every_ms=0)
    trainer = start(config, PRIOR, None, {}, now=0)
    catalogue = _Catalogue()
    ctr = {1: 0.10, 2: 0.10, 3: 0.05, 4: 0.10}
    kept: dict[int, np.ndarray] = {}
    for generation in (1, 2, 3, 4):
        trainer, _, _ = step(trainer, examples(rng, np.ones(F), 16), now=generation)
        trainer, _, _ = step(trainer, pairs(8), now=generation, catalogue=catalogue)
        assert trainer.m is not None
        kept[generation] = trainer.m.copy()
        trainer, _, _ = step(trainer, traffic(trainer.head.version, 6_000,
                                              int(6_000 * ctr[generation])), now=generation)
    assert trainer.head.origin == "rollback"
    assert trainer.head.projection == "online-2.2"  # generation 2's last version's
    assert trainer.m is not None
    assert np.allclose(trainer.m, kept[2], atol=2e-3)   # float16 on the topic
    assert not np.allclose(trainer.m, kept[4], atol=2e-3)
    assert set(trainer.projections) == {"online-1.2", "online-2.2"}   # the checkpoints'


def test_a_tuned_head_is_adopted_with_its_projection() -> None:
    from app.core.tuning import OnlineConfig

    trainer = start(TrainerConfig(projection=OnlineConfig()), PRIOR, None, {}, now=0)
    assert trainer.m is None                       # nothing published: the identity
    w1 = np.roll(np.eye(4, dtype=np.float32), 1, axis=0)
    tuned = ModelVersion(version="tuned-x", generation=0, weights=(1.0,) * F,
                         published_at=9, origin="tune", projection="tuned-x")
    trainer = adopt(trainer, tuned, {"tuned-x": w1})
    assert trainer.m is not None
    assert np.array_equal(trainer.m, w1.T)
    resumed = start(TrainerConfig(), PRIOR, tuned, {}, now=0, projections={"tuned-x": w1})
    assert resumed.m is not None
    assert np.array_equal(resumed.m, w1.T)
