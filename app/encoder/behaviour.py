"""The behaviour model as a worker serves it: the exported artefact (app/train/export.py)
loaded into onnxruntime, torch-free. One call turns a batch of users' stored sequences into
user vectors; app.core.behaviour scores the catalogue with them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.core.behaviour import FloatArray, ItemSpace
from app.core.sequence import HashedVocabulary, stored_tokens
from app.encoder.runtime import session_options

RANKER_FILE = "ranker.json"
"""The model's weight in the ranker (app.train.weight), when it was chosen: the item
space's ``scale``; without the file the model is served at scale 1."""
CHUNK = 8
"""Users per onnxruntime call: per user, calls of 8 cost about half of calls of 64 or 256
(the activations of a few users stay in cache; `streamrec bench behaviour`)."""


@dataclass
class SequenceModel:
    version: str
    length: int
    session: ort.InferenceSession
    vocabulary: HashedVocabulary
    space: ItemSpace
    manifest: dict[str, Any]

    @classmethod
    def load(cls, folder: Path, threads: int = 1) -> SequenceModel:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("kind") != "behaviour-model":
            raise ValueError(f"{folder} does not hold an exported behaviour model")
        projection = (np.load(folder / "text_projection.npy").astype(np.float32)
                      if "text_projection.npy" in manifest["files"] else None)
        table = np.load(folder / "items.npy").astype(np.float32)
        items: list[str] = manifest["items"]
        scale = (float(json.loads((folder / RANKER_FILE).read_text())["sequence_scale"])
                 if RANKER_FILE in manifest["files"] else 1.0)
        session = ort.InferenceSession(str(folder / "user.onnx"), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        return cls(version=manifest["version"], length=int(manifest["config"]["length"]),
                   session=session, vocabulary=HashedVocabulary(items),
                   space=ItemSpace(table, items, projection, scale=scale),
                   manifest=manifest)

    def user_vectors(self, sequences: Sequence[bytes]) -> list[FloatArray | None]:
        """Each stored sequence's user vector (None for a user with no item event yet), in
        one onnxruntime call over the model's whole window (positions are absolute within
        it, so a short history is read left-padded, as in training)."""
        out: list[FloatArray | None] = [None] * len(sequences)
        rows = [n for n, s in enumerate(sequences) if s]
        if not rows:
            return out
        batch = stored_tokens([sequences[n] for n in rows], self.vocabulary, self.length)
        vectors = np.concatenate([
            self.session.run(["user"], {"items": batch.items[at:at + CHUNK],
                                        "kinds": batch.kinds[at:at + CHUNK],
                                        "gaps": batch.gaps[at:at + CHUNK]})[0]
            for at in range(0, len(rows), CHUNK)])
        for n, vector in zip(rows, vectors, strict=True):
            out[n] = vector.astype(np.float32)
        return out
