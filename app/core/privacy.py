"""Pseudonymous user ids: a keyed hash (HMAC-SHA-256) of each user id, used in its place
for everything StreamRec stores or writes about the user (state keys, changelogs,
remembered lists, the recommendations topic), so that the stored data cannot be linked to a
person without the key. The key is a secret setting; anyone holding it can compute a known
user's pseudonym (to find their list, or to prove deletion), nobody can invert one."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = b"p:"   # marks a pseudonym, so one never passes for a raw id
DIGEST_HEX = 32  # 128 bits of the HMAC: collisions need ~2**64 users


class Pseudonyms:
    """``user key bytes -> pseudonym bytes`` under one secret key; the identity without a
    key (pseudonymisation off)."""

    __slots__ = ("_key",)

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    @property
    def enabled(self) -> bool:
        return bool(self._key)

    def __call__(self, user_key: bytes) -> bytes:
        if not self._key:
            return user_key
        digest = hmac.new(self._key, user_key, hashlib.sha256).hexdigest()
        return PREFIX + digest[:DIGEST_HEX].encode()
