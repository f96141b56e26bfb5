"""The hand-off from the threads that decide frames to the publish thread: never blocks, never loses a verdict.

Why bytes: an item holds a frame and a float32 anomaly map (tens of MB at 5 MP), so a bound in items alone let
the queue grow to gigabytes behind a slow output, and a full queue blocked the processing thread.

`put` never waits. An item's pictures are admitted while the queue holds fewer than `max_items` items and the
bytes held stay within `max_bytes`; otherwise they are dropped and counted (the frame is then not archived and
the ZeroMQ image header goes out without pictures) and the verdict goes on alone. Verdicts are never refused:
they are small (~1-3 KB of JSON) and a part without a verdict is worse than a late one. So memory is bounded
by `max_bytes` for pictures, while verdicts grow the queue only behind a publish thread that stays stuck (e.g.
the verdict log's disk hangs), by one per frame: `backlogged` says so from `max_items` on and the daemon raises
alarm publish_stalled. Bytes are held from `put` until `release` (called by whichever thread finishes with the
item last: the publish thread, or the archive thread), so the budget also covers items waiting for the archive.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import replace

from linesight.daemon.sinks.encoding import Outgoing


class PublishQueue:
    """FIFO of `Outgoing` items bounded in bytes (pictures only; see module docstring). Thread-safe."""

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes, self.max_items = max_bytes, max_items
        self._items: deque[Outgoing | None] = deque()
        self._cv = threading.Condition()
        self._bytes = 0
        self._counters = dict.fromkeys(("pictures_dropped_bytes", "pictures_dropped_items"), 0)

    @property
    def counters(self) -> dict[str, int]:
        with self._cv:
            return dict(self._counters)

    @property
    def held_bytes(self) -> int:
        """Bytes held by items put and not yet released."""
        return self._bytes

    @property
    def backlogged(self) -> bool:
        """True while `max_items` or more items wait: the publish thread is that far behind (pictures dropped)."""
        return len(self._items) >= self.max_items

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing) -> Outgoing:
        """Queue `item`, without its pictures when they do not fit; returns what was queued. Never blocks."""
        with self._cv:
            if item.pictures is not None:
                if len(self._items) >= self.max_items:
                    self._counters["pictures_dropped_items"] += 1
                    item = replace(item, pictures=None)
                elif self._bytes + item.nbytes > self.max_bytes:
                    self._counters["pictures_dropped_bytes"] += 1
                    item = replace(item, pictures=None)
            self._bytes += item.nbytes
            self._items.append(item)
            self._cv.notify()
        return item

    def close(self) -> None:
        """Let `get` return None once everything queued before has been taken."""
        with self._cv:
            self._items.append(None)
            self._cv.notify()

    def get(self) -> Outgoing | None:
        """The oldest item (waits for one); None after `close`."""
        with self._cv:
            while not self._items:
                self._cv.wait()
            return self._items.popleft()

    def release(self, item: Outgoing) -> None:
        """The item's bytes are free again (its last consumer is done with it)."""
        with self._cv:
            self._bytes -= item.nbytes
