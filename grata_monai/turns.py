"""Turns on the GPU between threads: their inference runs at once, a CUDA graph capture runs alone.

Hosts call one inferer from several threads (MONAI Label's requests, the throughput command's
streams). A working copy captures its CUDA graphs on its first volumes, while other threads may be
running eager passes. PyTorch does not support that: on an H100, a thread's eager convolution
crashed the process (segmentation fault) while another thread ended a capture. So every call of an
inferer on CUDA holds a *running* turn, shared with the other threads, and a capture waits until no
other thread is running and keeps new ones waiting until it is done (:data:`TURNS`).

GPU work of a host outside the inferer (its own pre- and post-processing) waits for a capture
only where it takes a running turn itself, as the bundle's background writes and the throughput
pipeline do.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["TURNS", "Turns"]


class Turns:
    """A shared turn for running and an exclusive one for capturing. A running thread that comes to a
    capture steps out of the running ones while it waits (two such threads cannot deadlock), and a
    waiting capture goes before threads that have not started running yet."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0  # threads holding a running turn
        self._waiting = 0  # captures waiting for theirs
        self._capturing = False
        self._held = threading.local()  # this thread's depth of running turns

    @property
    def running_threads(self) -> int:
        """How many threads hold a running turn now."""
        return self._running

    def _depth(self) -> int:
        return getattr(self._held, "depth", 0)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Run alongside other threads, after any capture that is waiting or under way."""
        depth = self._depth()
        if depth == 0:
            with self._changed:
                self._changed.wait_for(lambda: not (self._capturing or self._waiting))
                self._running += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            if depth == 0:
                with self._changed:
                    self._running -= 1
                    self._changed.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Capture with no other thread running or capturing; a running turn of this thread is kept."""
        mine = self._depth() > 0
        with self._changed:
            self._running -= mine
            self._waiting += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._capturing and self._running == 0)
            self._waiting -= 1
            self._capturing = True
        try:
            yield
        finally:
            with self._changed:
                self._capturing = False
                self._running += mine
                self._changed.notify_all()


TURNS = Turns()  # one per process: captures exclude every inferer's threads
