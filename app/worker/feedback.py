"""The worker's side of the feedback loop: glue between Faust and the pure learning core.

- events: each published list is remembered for attribution (the feedback table, under one
  of the user's slot keys, in the user's partition, so the list and its feedback meet on
  one worker), and how many
  items each learnt version showed is sent to the trainer;
- feedback: joined with the remembered list (app.core.attribution); the examples and
  clicks by version go to the one-partition ``examples`` topic;
- examples: one trainer (whichever worker owns that partition) folds them into the learner
  (app.core.training) and publishes versions on the compacted ``models`` topic;
- models: every worker follows that whole topic (like the catalogue) and serves its head to
  the users of the experiment's ``learning`` variant; other variants keep the documented
  defaults (the frozen control).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from app.contract.records import Feedback, FeedbackType
from app.core.attribution import Outcome, attribute
from app.core.experiments import variant_of
from app.core.learning import LearnerConfig, LearnerState
from app.core.ranking import FEATURES, RankerParams
from app.core.recommender import with_sources
from app.core.serving import now_ms
from app.core.state import FeedbackState, Shown, fold_feedback
from app.core.training import (
    Batch,
    SoftmaxSet,
    Trainer,
    TrainerConfig,
    adopt,
    merge,
    start,
    step,
)
from app.core.tuning import OnlineConfig
from app.core.versions import CONTROL, ModelVersion, Registry, as_params, generation_of
from app.metrics import Metrics
from app.settings import Settings
from app.worker.results import KeyResult, count_failure

log = logging.getLogger(__name__)

LEARNING = "learning"       # the variant served by the learnt head
ADOPTED = frozenset({"command", "tune"})   # heads the trainer follows when it sees them
_batch_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(Batch)


class FeedbackLoop:
    def __init__(self, settings: Settings, metrics: Metrics, base: RankerParams,
                 sources: frozenset[str], encoder_name: str, examples_topic: Any,
                 models_topic: Any, dimension: int = 384,
                 remembered: Callable[[Feedback], Shown | None] = lambda feedback: None
                 ) -> None:
        """``remembered``: the list in the slot a feedback's rec_id names (the feedback
        table; app.core.attribution)."""
        self.settings = settings
        self._remembered = remembered
        self.metrics = metrics
        self.experiment = settings.ab_test()
        self.registry = Registry()
        self.synced = asyncio.Event()
        self._base, self._sources, self._encoder_name = base, sources, encoder_name
        self._dimension = dimension
        self._examples, self._models = examples_topic, models_topic
        self._params: dict[str, RankerParams] = {}
        self._projection: dict[str, str] = {}   # the projection a variant is served with
        self._shown: dict[str, int] = {}
        self._outcomes: list[tuple[Feedback, Outcome]] = []
        self._trainer: Trainer | None = None
        self.catalogue: SoftmaxSet | None = None   # the projection learns against it
        rate = settings.projection_learning_rate
        self.config = TrainerConfig(
            learner=LearnerConfig(learning_rate=settings.learning_rate),
            min_impressions=settings.generation_impressions,
            projection=OnlineConfig(learning_rate=rate) if rate > 0 else None,
            projection_every_ms=int(settings.projection_every_seconds * 1000))
        for variant in self.experiment.shares:
            metrics.model_info.labels(variant, base.version, encoder_name).set(1)

    # --- serving --------------------------------------------------------------------------

    def variant(self, user_id: str) -> str:
        return variant_of(self.experiment, user_id)

    def params_for(self, variant: str) -> RankerParams:
        """What a variant is served with: the learnt head for ``learning``, else the base."""
        return self._params.get(variant, self._base)

    def projection_for(self, variant: str) -> str | None:
        """The name of the projection W1 a variant is served with (None: the identity)."""
        return self._projection.get(variant) or None

    def apply_model(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the models topic."""
        head = self.registry.apply(key, value)
        if head is not None:
            self.use(head)

    def use(self, head: ModelVersion) -> None:
        previous = self.params_for(LEARNING).version
        w1 = self.registry.projections.get(head.projection) if head.projection else None
        if head.projection and (w1 is None or w1.shape != (self._dimension,) * 2):
            log.error("version %s names projection %s, which is not on the models topic or "
                      "not for this encoder: served without it", head.version, head.projection)
            w1 = None
        params = with_sources(as_params(head, self._base, w1), self._sources)
        self._params[LEARNING] = params
        self._projection[LEARNING] = head.projection if w1 is not None else ""
        if LEARNING in self.experiment.shares:
            self.metrics.model_info.remove(LEARNING, previous, self._encoder_name)
            self.metrics.model_info.labels(LEARNING, params.version, self._encoder_name).set(1)
        for name in FEATURES:
            self.metrics.model_weight.labels(name).set(getattr(params, name))
        self.metrics.model_updates.inc()
        if self.synced.is_set() and head.reward_at:
            self.metrics.model_delay.observe(max(0.0, time.time() - head.reward_at / 1000))

    # --- events: what was shown -------------------------------------------------------------

    def count_shown(self, variant: str, version: str, items: int) -> None:
        self.metrics.shown.labels(variant).inc(items)
        key = traffic_key(variant, version)
        if key is not None:
            self._shown[key] = self._shown.get(key, 0) + items

    async def flush_shown(self) -> None:
        """Tell the trainer how many items each learnt version and the control showed (once
        per batch)."""
        if self._shown:
            shown, self._shown = self._shown, {}
            await self._examples.send(value=_batch_encoder.encode(Batch(shown=shown)))

    def learns(self) -> bool:
        """Whether anyone is served what the learner learns (the experiment has a
        ``learning`` variant with a share)."""
        return self.experiment.shares.get(LEARNING, 0.0) > 0

    def learns_projection(self) -> bool:
        return self.config.projection is not None

    async def send_behaviour(self, features: list[tuple[float, ...]], rewards: list[float],
                             queries: list[bytes], targets: list[str], produced_at: int
                             ) -> None:
        """What users' next items teach, to the trainer, once per batch: preferences for the
        ranker (app.core.learning.preferences), (interest, item) pairs for the projection."""
        if rewards or queries:
            await self._examples.send(value=_batch_encoder.encode(Batch(
                features=features, rewards=rewards, weights=[1.0] * len(rewards),
                produced_at=produced_at, queries=queries, targets=targets)))

    # --- feedback: attribution --------------------------------------------------------------

    async def prepare_feedback(self, records: list[Feedback]
                               ) -> Callable[[FeedbackState, Feedback], FeedbackState]:
        """A fold that counts each feedback and joins it with its shown list, keeping each
        outcome for :meth:`after_feedback`."""
        outcomes: list[tuple[Feedback, Outcome]] = []
        self._outcomes = outcomes

        def fold(state: FeedbackState, feedback: Feedback) -> FeedbackState:
            state, outcome = attribute(fold_feedback(state, feedback), feedback,
                                       self._remembered(feedback))
            outcomes.append((feedback, outcome))
            return state

        return fold

    async def after_feedback(self, results: list[KeyResult[FeedbackState, Feedback]]) -> None:
        outcomes, self._outcomes = self._outcomes, []
        batch = examples_of(outcomes, self.metrics)
        if batch.rewards or batch.clicks:
            stamps = [r.last_event.message.timestamp for r in results]
            produced = int(max(stamps) * 1000) if stamps and all(stamps) else now_ms()
            batch = msgspec.structs.replace(batch, produced_at=produced)
            await self._examples.send(value=_batch_encoder.encode(batch))

    # --- the trainer ----------------------------------------------------------------------

    async def train(self, values: Sequence[bytes]) -> None:
        """Fold a batch of ``examples`` records into the learner; publish what it yields."""
        batches = []
        for value in values:
            try:
                batches.append(_batch_decoder.decode(value))
            except msgspec.DecodeError as exc:
                count_failure(self.metrics, "examples", exc)
        if not batches:
            return
        await self.synced.wait()
        trainer = self._trainer or start(
            self.config, LearnerState.from_params(self._base), self.registry.head,
            self.registry.checkpoints, now_ms(), self.registry.projections)
        head = self.registry.head
        if (head is not None and head.origin in ADOPTED
                and head.published_at > trainer.adopted_at):
            trainer = adopt(trainer, head, self.registry.projections)
            if head.origin == "command":
                self.metrics.rollbacks.labels("command").inc()
            log.warning("trainer follows %s (%s): %s", head.version, head.origin, head.note)
        merged = merge(batches)
        pairs = trainer.m_pairs
        # in a thread: the projection's step is matrix work (numpy lets go of the GIL)
        trainer, out, verdict = await asyncio.to_thread(step, trainer, merged, now_ms(),
                                                        self.catalogue)
        self._trainer = trainer
        if trainer.m_pairs > pairs:
            self.metrics.projection_pairs.inc(trainer.m_pairs - pairs)
            self.metrics.projection_loss.set(trainer.m_loss)
        positives = sum(1 for r in merged.rewards if r > 0)
        self.metrics.examples.labels("positive").inc(positives)
        self.metrics.examples.labels("negative").inc(len(merged.rewards) - positives)
        for key, record in out:
            await self._models.send(key=key, value=record)
        if verdict is not None and verdict.roll_back:
            self.metrics.rollbacks.labels("auto").inc()
            log.warning("learning variant rolled back: %s", trainer.head.note)


def traffic_key(variant: str, version: str) -> str | None:
    """Under which key the trainer counts a list's traffic: its learnt version, or the
    control for the other variants (None: a learning-variant list under the defaults)."""
    if variant != LEARNING:
        return CONTROL
    return version if generation_of(version) is not None else None


def examples_of(outcomes: Sequence[tuple[Feedback, Outcome]], metrics: Metrics) -> Batch:
    """The trainer's batch from a feedback batch's outcomes (metrics counted on the way)."""
    features: list[tuple[float, ...]] = []
    rewards: list[float] = []
    weights: list[float] = []
    clicks: dict[str, int] = {}
    for feedback, outcome in outcomes:
        if outcome.unattributed is not None:
            metrics.unattributed.labels(outcome.unattributed).inc()
            continue
        shown = outcome.shown
        if shown is None:
            continue
        if outcome.conversion:
            metrics.conversions.labels(shown.variant).inc()
        key = traffic_key(shown.variant, shown.model_version)
        if feedback.type is FeedbackType.CLICK and key is not None:
            clicks[key] = clicks.get(key, 0) + 1
        for example in outcome.examples:
            features.append(example.features)
            rewards.append(example.reward)
            weights.append(example.weight)
    return Batch(features=features, rewards=rewards, weights=weights, clicks=clicks)
