"""Server-Sent Events: what a feed thread announces reaches every open page, and a slow page never holds it up.

Why a queue per page on its own event loop: the feed threads must never wait for a browser. Each page gets a
bounded asyncio queue filled with `call_soon_threadsafe`; when a page falls behind, its oldest events are dropped
(the page asks for the verdict list again when it sees a gap in seq) and the station's feed goes on.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

QUEUE = 256  # events a page may be behind before its oldest are dropped
KEEPALIVE_S = 15.0  # a comment line this often: proxies keep the stream open, a closed page is noticed


@dataclass(frozen=True)
class Event:
    """One SSE message: `kind` is the event name the page listens for, `data` its JSON."""

    kind: str
    data: dict[str, Any]

    def encode(self) -> bytes:
        return f"event: {self.kind}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n".encode()


def _offer(q: asyncio.Queue[Event], event: Event) -> None:
    """On the page's loop: enqueue, dropping the oldest event when the page is behind."""
    if q.full():
        q.get_nowait()
    q.put_nowait(event)


class Broadcaster:
    """Fan-out from any thread to the pages listening on one station."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = set()

    def publish(self, event: Event) -> None:
        with self._lock:
            pages = list(self._pages)
        for loop, q in pages:
            try:
                loop.call_soon_threadsafe(_offer, q, event)
            except RuntimeError:  # that page's loop is closed (server stopping): forget it
                with self._lock:
                    self._pages.discard((loop, q))

    async def stream(self, first: Callable[[], list[Event]]) -> AsyncIterator[bytes]:
        """SSE bytes for one page: `first()` (the current state, taken once the page listens, so nothing falls
        between it and the events; the page drops what it already has by seq), then every event. The server ends
        it when the page goes (cancelled on disconnect, or a failed send at the latest at the next keepalive)."""
        entry = (asyncio.get_running_loop(), asyncio.Queue[Event](maxsize=QUEUE))
        with self._lock:
            self._pages.add(entry)
        try:
            yield b"retry: 2000\n\n"  # the browser reconnects after 2 s when the stream breaks
            for event in first():
                yield event.encode()
            while True:
                try:
                    event = await asyncio.wait_for(entry[1].get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                yield event.encode()
        finally:
            with self._lock:
                self._pages.discard(entry)
