"""Per-volume progress of a bundle run: ``[3/14] mr_05_image.nii.gz  9.8 s  ETA 1 min 48 s``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ignite.engine import Events

__all__ = ["ProgressHandler", "duration"]

logger = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``9.8 s``, ``2 min 05 s`` or ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _name(output: Any, key: str) -> str:
    item = output[0] if isinstance(output, list) and output else output
    try:
        source = item[key].meta["filename_or_obj"]
    except (KeyError, TypeError, AttributeError, IndexError):
        return "volume"
    source = source[0] if isinstance(source, (list, tuple)) else source
    return Path(str(source).rstrip("/\\")).name


class ProgressHandler:
    """An ignite handler for the bundle's evaluator: one line per volume with its index, name,
    seconds and the estimated time left, logged at INFO on ``grata_monai.bundle.progress``.

    Args:
        key: the output key whose metadata names the input (``filename_or_obj``).
    """

    def __init__(self, key: str = "pred") -> None:
        self.key = key
        self.start = self.last = 0.0

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def started(self, engine: Any) -> None:
        self.start = self.last = time.perf_counter()

    def line(self, done: int, total: int | None, name: str, seconds: float, elapsed: float) -> str:
        """The progress line after ``done`` of ``total`` volumes."""
        text = f"[{done}/{total or '?'}] {name}  {duration(seconds)}"
        if total and done < total:
            text += f"  ETA {duration(elapsed / done * (total - done))}"
        return text

    def __call__(self, engine: Any) -> None:
        now = time.perf_counter()
        state = engine.state
        done = (state.iteration - 1) % (state.epoch_length or state.iteration) + 1
        logger.info(
            self.line(
                done,
                state.epoch_length,
                _name(state.output, self.key),
                now - self.last,
                now - self.start,
            )
        )
        self.last = now
