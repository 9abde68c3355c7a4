"""Model artefacts on the ``models`` topic: the folder of a behaviour model exported by
`streamrec train` travels to every worker through Kafka itself (no shared disk, no object
store): packed into one content-hashed blob, cut into chunks under any broker's default
record limit, and put together again by each worker that follows the topic (pure functions
and plain data; the worker writes and loads what it assembles).

Keys on the (compacted) topic, in the order a publisher sends them:

- ``behaviour:<version>/<i>``: chunk ``i`` of the packed artefact;
- ``behaviour:<version>``: its :class:`Artefact` (SHA-256, size, chunk count, note);
- ``behaviour-head``: the :class:`BehaviourHead`, the version every worker serves ("" for
  none: the ranker without a model) and the one it replaced (what a rollback goes back to).

A publisher keeps the newest ``KEEP`` versions and deletes older ones (tombstones for their
chunks and manifest), so the topic holds a bounded number of bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import Struct

PREFIX = b"behaviour:"
HEAD_KEY = b"behaviour-head"
CHUNK_BYTES = 512 * 1024   # under Kafka's default 1 MiB record limit, with headroom
KEEP = 3                   # versions kept on the topic: the head, the one before, one more


class Artefact(Struct, frozen=True, kw_only=True):
    """The manifest of one published version."""

    version: str
    sha256: str            # of the packed blob
    size: int
    chunks: int
    published_at: int = 0  # ms
    note: str = ""


class BehaviourHead(Struct, frozen=True, kw_only=True):
    """Which behaviour model the workers serve."""

    version: str           # "" : none
    previous: str = ""     # what it replaced: a rollback's default target
    published_at: int = 0  # ms
    origin: str = "publish"   # publish | rollback | trainer
    note: str = ""


_encode = msgspec.msgpack.Encoder().encode
_files = msgspec.msgpack.Decoder(dict[str, bytes])
_artefact = msgspec.msgpack.Decoder(Artefact)
_head = msgspec.msgpack.Decoder(BehaviourHead)


def pack(files: dict[str, bytes]) -> bytes:
    """One blob of a folder's files (by name, in name order: the same files, the same
    bytes)."""
    return _encode(dict(sorted(files.items())))


def unpack(blob: bytes) -> dict[str, bytes]:
    return _files.decode(blob)


def manifest_key(version: str) -> bytes:
    return PREFIX + version.encode()


def chunk_key(version: str, index: int) -> bytes:
    return PREFIX + f"{version}/{index}".encode()


def encode_head(head: BehaviourHead) -> bytes:
    return _encode(head)


def publication(version: str, files: dict[str, bytes], published_at: int, note: str = "",
                chunk_bytes: int = CHUNK_BYTES) -> tuple[Artefact, list[tuple[bytes, bytes]]]:
    """The records that publish ``files`` as ``version`` (chunks, then the manifest; the
    head is the caller's, sent after them)."""
    blob = pack(files)
    chunks = [blob[at:at + chunk_bytes] for at in range(0, len(blob), chunk_bytes)] or [b""]
    artefact = Artefact(version=version, sha256=hashlib.sha256(blob).hexdigest(),
                        size=len(blob), chunks=len(chunks), published_at=published_at,
                        note=note)
    records = [(chunk_key(version, n), chunk) for n, chunk in enumerate(chunks)]
    records.append((manifest_key(version), _encode(artefact)))
    return artefact, records


def deletions(artefact: Artefact) -> list[tuple[bytes, None]]:
    """Tombstones that remove a version from the topic."""
    return [*((chunk_key(artefact.version, n), None) for n in range(artefact.chunks)),
            (manifest_key(artefact.version), None)]


def to_delete(kept: dict[str, Artefact], serving: set[str], keep: int = KEEP) -> list[Artefact]:
    """The versions beyond the newest ``keep`` (by publication time) that nothing serves or
    would roll back to."""
    newest = sorted(kept.values(), key=lambda a: (a.published_at, a.version), reverse=True)
    return [a for a in newest[keep:] if a.version not in serving]


class IncompleteArtefactError(LookupError):
    """The head names a version whose chunks or manifest are not all read yet."""


@dataclass
class ArtefactStore:
    """What a follower of the models topic knows of behaviour models: the manifests and
    chunks of the kept versions, and the head."""

    artefacts: dict[str, Artefact] = field(default_factory=dict)
    chunks: dict[str, dict[int, bytes]] = field(default_factory=dict)
    head: BehaviourHead | None = None

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """One record of the topic; True when it is the head or completes the version the
        head names (the served model may have to change)."""
        if not key:
            return False
        if key == HEAD_KEY:
            self.head = _head.decode(value) if value else None
            return True
        if not key.startswith(PREFIX):
            return False
        name = key[len(PREFIX):].decode()
        version, _, index = name.partition("/")
        if index:
            if value is None:
                self.chunks.get(version, {}).pop(int(index), None)
            else:
                self.chunks.setdefault(version, {})[int(index)] = value
        elif value is None:
            self.artefacts.pop(version, None)
            self.chunks.pop(version, None)
        else:
            self.artefacts[version] = _artefact.decode(value)
        return self.head is not None and self.head.version == version and self.complete(version)

    def served(self) -> str:
        """The version the head names ("" : none)."""
        return self.head.version if self.head is not None else ""

    def complete(self, version: str) -> bool:
        artefact = self.artefacts.get(version)
        return artefact is not None and len(self.chunks.get(version, {})) >= artefact.chunks

    def files(self, version: str) -> dict[str, bytes]:
        """The files of a version, checked against its SHA-256. IncompleteArtefactError while
        parts are missing; ValueError when the parts do not make the published blob."""
        if not self.complete(version):
            raise IncompleteArtefactError(f"behaviour model {version}: not all of it is read")
        artefact = self.artefacts[version]
        parts = self.chunks[version]
        blob = b"".join(parts[n] for n in range(artefact.chunks))
        digest = hashlib.sha256(blob).hexdigest()
        if len(blob) != artefact.size or digest != artefact.sha256:
            raise ValueError(f"behaviour model {version}: {len(blob):,} bytes with SHA-256 "
                             f"{digest[:12]}, published {artefact.size:,} / "
                             f"{artefact.sha256[:12]}")
        return unpack(blob)

    def rollback_target(self, to: str | None = None) -> str:
        """The version a rollback serves: ``to`` ("none" for no model) when kept, else the
        head's previous one. LookupError when there is none."""
        if to == "none":
            return ""
        target = to if to is not None else (self.head.previous if self.head else "")
        if not target or target not in self.artefacts:
            kept = ", ".join(sorted(self.artefacts)) or "none"
            raise LookupError(f"no behaviour model to roll back to (asked: {to or 'previous'}"
                              f"; kept: {kept}; `--to none` serves no model)")
        return target


GATE = "valid_ndcg@10"   # the figure a new model must beat: NDCG@10 on validation events


def publish_verdict(new: dict[str, Any], served: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether a newly trained model (its manifest's ``result``) may replace the served
    one (``served``: its result, None when none is served): only when it reads a higher
    validation NDCG@10 on the same dataset. Figures from different datasets, or missing,
    do not compare: the answer is no, with the reason (an operator may force it)."""
    if served is None:
        return True, "no model is served"
    if new.get("dataset") != served.get("dataset"):
        return False, (f"the served model was measured on {served.get('dataset')}, this one "
                       f"on {new.get('dataset')}: not comparable")
    mine, theirs = new.get(GATE), served.get(GATE)
    if mine is None or theirs is None:
        return False, f"no {GATE} to compare (a model exported before the gate)"
    if mine > theirs:
        return True, f"{GATE} {mine:.4f} beats the served {theirs:.4f}"
    return False, f"{GATE} {mine:.4f} does not beat the served {theirs:.4f}"
