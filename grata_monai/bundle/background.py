"""The bundle's own run writes its segmentations in background threads, so the evaluator goes on to
the next volume while a NIfTI file is compressed and written.

:class:`BackgroundWrites` is the evaluator's ``postprocessing``: the bundle's ``postprocessing``
with every ``SaveImaged`` handed to ``threads`` threads, and an ignite handler that waits for the
last writes when the run completes. The bundle's ``postprocessing`` itself is left as it is, so
MONAI Label and MONAI Deploy, which read it and drop its ``SaveImaged``, see no change.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from ignite.engine import Events
from monai.transforms import Compose, SaveImaged

from grata_monai.turns import TURNS

__all__ = ["BackgroundWrites"]


class _InBackground:
    """``write`` on each item (a shallow copy) in ``pool``, each thread with its own copy of
    ``write`` (``SaveImage`` keeps per-call state); the item is returned at once."""

    def __init__(self, write: Callable, pool: ThreadPoolExecutor, pending: deque[Future]) -> None:
        self.write, self.pool, self.pending = write, pool, pending
        self.local = threading.local()

    def _write(self, data: dict) -> None:
        if not hasattr(self.local, "write"):
            self.local.write = copy.deepcopy(self.write)
        # what it writes, copied off the GPU in turn with the inferer's captures
        with TURNS.running():
            for key in self.write.keys:
                if isinstance(data.get(key), torch.Tensor):
                    data[key] = data[key].cpu()
        self.local.write(data)

    def __call__(self, data: Mapping) -> Mapping:
        self.pending.append(self.pool.submit(self._write, dict(data)))
        return data


class BackgroundWrites:
    """``postprocessing`` with its ``SaveImaged`` writes run in ``threads`` background threads.

    With more than ``2 * threads`` writes pending, the next volume waits for the oldest (memory
    stays bounded). A failed write raises its error on the next volume once the writes before it
    are done, and at the latest when the run completes.
    ``threads=0`` writes in the calling thread, as the plain ``postprocessing`` does.

    Args:
        postprocessing: the bundle's ``postprocessing`` (a ``Compose``).
        threads: writer threads; 0 writes inline.

    Raises:
        ValueError: ``threads`` is negative.
    """

    def __init__(self, postprocessing: Compose, threads: int = 2) -> None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
            raise ValueError(f"write_threads must be an integer >= 0, got {threads!r}.")
        self.threads = threads
        self.pending: deque[Future] = deque()
        self.pool = ThreadPoolExecutor(threads, "grata-write") if threads else None
        self.transforms = Compose(
            [self._wrap(t) for t in postprocessing.transforms],
            map_items=postprocessing.map_items,
            unpack_items=postprocessing.unpack_items,
        )

    def _wrap(self, transform: Callable) -> Callable:
        if self.pool is None or not isinstance(transform, SaveImaged):
            return transform
        return _InBackground(transform, self.pool, self.pending)

    def __call__(self, data: Any) -> Any:
        self._settle(limit=2 * self.threads)
        return self.transforms(data)

    def _settle(self, limit: int) -> None:
        """Collect the finished writes in order (raising a failed one's error); wait for the oldest
        until at most ``limit`` are pending."""
        while self.pending and (len(self.pending) > limit or self.pending[0].done()):
            self.pending.popleft().result()

    def wait(self, *_: Any) -> None:
        """Return once every write handed over is done; raise the first that failed."""
        self._settle(limit=0)

    def attach(self, engine: Any) -> None:
        """As a handler of the evaluator: wait for the last writes when the run completes."""
        engine.add_event_handler(Events.COMPLETED, self.wait)
