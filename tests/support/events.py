"""Well-formed event streams for integration tests."""

from __future__ import annotations

from app.contract.samples import good_view

TS = 1_700_000_000_000


def views(users: list[str], first: int, count: int) -> list[tuple[bytes | None, bytes | None]]:
    """Rounds ``first`` .. ``first + count - 1`` of one view per user, round by round; the
    event id of user u in round i is always ``u-i`` (so a repeated round is a redelivery)."""
    return [
        (user.encode(), good_view(user, f"{user}-{i}", f"item-{i}", TS + i))
        for i in range(first, first + count)
        for user in users
    ]
