"""The worker's feedback glue without Kafka: outcomes become the trainer's batch, a head on
the models topic becomes what the learning variant is served, the trainer publishes."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from app.contract.records import Feedback, FeedbackType
from app.core.attribution import attribute
from app.core.ranking import RankerParams
from app.core.recommender import SOURCES
from app.core.state import FeedbackState, Shown, ShownItem
from app.core.training import Batch
from app.core.versions import HEAD, ModelVersion, decode_version, encode_version
from app.metrics import Metrics
from app.settings import Settings
from app.worker.feedback import LEARNING, FeedbackLoop, examples_of


class Topic:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    async def send(self, key: Any = None, value: Any = None) -> None:
        self.sent.append((key, value))


def _loop(**settings: Any) -> tuple[FeedbackLoop, Metrics, Topic, Topic]:
    metrics = Metrics.create()
    examples, models = Topic(), Topic()
    loop = FeedbackLoop(Settings(_env_file=None, **settings), metrics, RankerParams(),
                        SOURCES, "enc", examples, models)
    return loop, metrics, examples, models


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _feedback(kind: FeedbackType, rec_id: str, item: str) -> Feedback:
    return Feedback(v=1, type=kind, event_id=f"{kind}-{rec_id}-{item}", user_id="u",
                    rec_id=rec_id, item_id=item, ts=10)


def test_outcomes_become_examples_clicks_by_version_and_counted_reasons() -> None:
    shown = Shown(rec_id="r", model_version="learning-2.5", variant=LEARNING, produced_at=0,
                  items=tuple(ShownItem(i, n, (float(n),) * 5) for n, i in enumerate("abc")))
    state = FeedbackState()
    outcomes = []
    for feedback in (_feedback(FeedbackType.CLICK, "r", "c"),
                     _feedback(FeedbackType.PURCHASE, "r", "a"),
                     _feedback(FeedbackType.CLICK, "gone", "a"),
                     _feedback(FeedbackType.CLICK, "r", "zzz")):
        state, outcome = attribute(state, feedback, shown)
        outcomes.append((feedback, outcome))
    metrics = Metrics.create()
    batch = examples_of(outcomes, metrics)
    assert batch.rewards == [1.0, 0.0] * 4           # c over a and b; a (bought) over b, c
    assert batch.weights == [1.0] * 4 + [3.0] * 4
    assert batch.clicks == {"learning-2.5": 1}
    assert _value(metrics, "streamrec_conversions_total", variant=LEARNING) == 1
    assert _value(metrics, "streamrec_unattributed_feedback_total", reason="unknown_rec") == 1
    assert _value(metrics, "streamrec_unattributed_feedback_total",
                  reason="item_not_shown") == 1


def test_a_head_is_served_to_the_learning_variant_only() -> None:
    loop, metrics, _, _ = _loop()
    assert loop.params_for(LEARNING).version == RankerParams().version
    head = ModelVersion(version="learning-1.3", generation=1, weights=(2.0, 0.5, 0.0, 0.0, 0.0))
    loop.apply_model(HEAD, encode_version(head))
    assert loop.params_for(LEARNING).version == "learning-1.3"
    assert loop.params_for(LEARNING).semantic == 2.0
    assert loop.params_for("frozen").version == RankerParams().version
    assert _value(metrics, "streamrec_model_info", variant=LEARNING, version="learning-1.3",
                  encoder="enc") == 1
    assert _value(metrics, "streamrec_model_info", variant=LEARNING,
                  version=RankerParams().version, encoder="enc") == 0
    assert _value(metrics, "streamrec_model_weight", feature="covisit") == 0.5


def test_a_switched_off_source_stays_off_in_a_learnt_version() -> None:
    loop = FeedbackLoop(Settings(_env_file=None), Metrics.create(), RankerParams(),
                        frozenset({"covisit", "popular"}), "enc", Topic(), Topic())
    loop.apply_model(HEAD, encode_version(ModelVersion(
        version="learning-1.1", generation=1, weights=(2.0, 1.0, 0.1, 0.0, 0.0))))
    assert loop.params_for(LEARNING).semantic == 0.0


def test_shown_counts_reach_the_trainer_once_per_batch_and_train_it() -> None:
    loop, metrics, examples, models = _loop()
    loop.count_shown(LEARNING, "learning-1.1", 10)
    loop.count_shown("frozen", "default-2", 10)
    asyncio.run(loop.flush_shown())
    asyncio.run(loop.flush_shown())                     # nothing new: nothing sent
    assert len(examples.sent) == 1
    assert msgspec.msgpack.decode(examples.sent[0][1], type=Batch).shown == {
        "learning-1.1": 10, "control": 10}
    assert _value(metrics, "streamrec_shown_items_total", variant="frozen") == 10

    loop.synced.set()
    # five features wide: examples from a worker that predates the newer ones still teach
    batch = Batch(features=[(1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0, 0.0)],
                  rewards=[1.0, 0.0], weights=[1.0, 1.0], produced_at=5)
    asyncio.run(loop.train([msgspec.msgpack.encode(batch), b"\xc1 not msgpack"]))
    assert [key for key, _ in models.sent] == [HEAD]
    head = decode_version(models.sent[0][1])
    assert head.version == "learning-1.1"
    assert head.weights[0] > 1.0 > head.weights[1]     # the clicked feature gained
    assert _value(metrics, "streamrec_learning_examples_total", reward="positive") == 1
    assert _value(metrics, "streamrec_processing_errors_total", topic="examples") == 1


def test_a_projection_for_another_encoder_is_not_served() -> None:
    import numpy as np

    from app.core.versions import encode_projection, projection_key

    loop, _, _, _ = _loop()
    loop.apply_model(projection_key("small"), encode_projection(np.eye(8, dtype=np.float32)))
    loop.apply_model(HEAD, encode_version(ModelVersion(
        version="tuned-small", generation=0, weights=(1.0,) * 5, projection="small",
        origin="tune")))
    assert loop.params_for(LEARNING).version == "tuned-small"
    assert loop.params_for(LEARNING).w1 is None
