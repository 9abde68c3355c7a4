"""The worker's side of behaviour models published on the ``models`` topic: it follows the
artefacts (app.core.artefacts), and when the head names a version it has read in full it
checks it, writes it under the data dir, loads it in a thread and hands it to the pipeline
between batches: a hot swap, no restart. A version that fails its check or does not load
is counted and logged; the model served before stays."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from app.core.artefacts import ArtefactStore
from app.encoder.behaviour import SequenceModel
from app.metrics import Metrics
from app.worker.results import count_failure

log = logging.getLogger(__name__)


class BehaviourModels:
    """Follows behaviour-model records; ``use`` serves a loaded model (None: no model)."""

    def __init__(self, folder: Path, metrics: Metrics,
                 use: Callable[[SequenceModel | None], None], served: str = "") -> None:
        self.folder = folder
        self.store = ArtefactStore()
        self.metrics = metrics
        self._use = use
        self.served = served          # the version in use ("" : none, or the local model)
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the models topic (those that are not behaviour models are
        ignored); a swap is started when the head may have changed."""
        if self.store.apply(key, value):
            self._soon()

    def _soon(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True        # looked at once the running swap is done
            return
        self._task = asyncio.get_running_loop().create_task(self._swap())

    async def _swap(self) -> None:
        while True:
            self._again = False
            await self.swap_to(self.store.served())
            if not self._again:
                return

    async def swap_to(self, version: str) -> None:
        if version == self.served or (version and not self.store.complete(version)):
            return                    # nothing to do, or the rest of it is still to come
        try:
            model = await asyncio.to_thread(self._load, version) if version else None
        except Exception as exc:  # noqa: BLE001 - keep serving what serves now
            count_failure(self.metrics, "behaviour-model", exc)
            log.error("behaviour model %s not served (%s: %s); still serving %s", version,
                      type(exc).__name__, exc, self.served or "none")
            return
        previous, self.served = self.served, version
        self._use(model)
        log.info("behaviour model %s served (was %s)", version or "none", previous or "none")
        self._tidy(keep={version, previous})

    def _load(self, version: str) -> SequenceModel:
        """Check, write and load a version (in a worker thread: it reads megabytes)."""
        files = self.store.files(version)
        target = self.folder / version
        partial = self.folder / f".{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, content in files.items():
            if Path(name).name != name:
                raise ValueError(f"behaviour model {version}: file name {name!r}")
            (partial / name).write_bytes(content)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        model = SequenceModel.load(target)
        if model.version != version:
            raise ValueError(f"published as {version}, its manifest says {model.version}")
        return model

    def _tidy(self, keep: set[str]) -> None:
        """Remove the folders of versions neither served nor just replaced."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
