"""The one place StreamRec touches a private Faust API.

Faust tables find the partition of a changelog write through the "current event" context
variable, which Faust sets only on its per-event path. Inside ``stream.take_events()`` the
agent handles a whole batch, so before it writes a key's state it sets the current event to
that key's last event itself (faust-streaming issue #497). A test covers this.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event


@contextmanager
def acting_as(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event for table writes inside the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
