"""The methods the benchmark and the study compare: a registry of name -> :class:`Method`.

Each method declares the inferer that builds it, the settings it takes (read from that inferer's
signature) and the settings it fixes (the ablations). :func:`make_inferer` gives a method the shared
settings it takes and leaves out those only other methods take (GraTa's views for TENT, ``steps``
for norm statistics); a setting that no method takes is an error. Add a method by adding an entry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monai.inferers import Inferer, SlidingWindowInferer

from grata_monai import defaults
from grata_monai.adaptive import AdaptiveInferer
from grata_monai.baselines import MemoInferer, NormStatsInferer, TentInferer
from grata_monai.inferer import GraTaInferer

__all__ = ["Method", "METHODS", "SHARED_DEFAULTS", "keywords", "make_inferer"]

# What every method gets unless the settings say otherwise (SlidingWindowInferer has no defaults for these).
SHARED_DEFAULTS = {
    "roi_size": defaults.ROI_SIZE,
    "sw_batch_size": defaults.SW_BATCH_SIZE,
    "overlap": defaults.OVERLAP,
}


def keywords(cls: Callable) -> frozenset[str]:
    """The keyword arguments of ``cls``'s signature (its settings)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(n for n, p in inspect.signature(cls).parameters.items() if p.kind in kinds)


@dataclass(frozen=True)
class Method:
    """A benchmark method: ``build`` makes its inferer from the settings in ``takes``, plus ``fixed``."""

    build: Callable[..., Inferer]
    takes: frozenset[str]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def make(self, settings: Mapping[str, Any]) -> Inferer:
        """The inferer with those of ``settings`` that this method takes.

        Raises:
            ValueError: ``settings`` sets what this method fixes.
        """
        clash = sorted(set(settings) & set(self.fixed))
        if clash:
            raise ValueError(f"this method fixes {clash} ({dict(self.fixed)}): leave them out.")
        return self.build(**{k: v for k, v in settings.items() if k in self.takes}, **self.fixed)


_ADAPTIVE, _GRATA = keywords(AdaptiveInferer), keywords(GraTaInferer)
METHODS: dict[str, Method] = {
    "source": Method(SlidingWindowInferer, keywords(SlidingWindowInferer)),
    "norm_stats": Method(NormStatsInferer, _ADAPTIVE - {"steps"}),
    "tent": Method(TentInferer, _ADAPTIVE),
    "memo": Method(MemoInferer, _ADAPTIVE | {"n_aug"}),
    "grata": Method(GraTaInferer, _GRATA),
    "grata_no_align": Method(
        GraTaInferer, _GRATA - {"align", "dynamic_lr"}, {"align": False, "dynamic_lr": False}
    ),
    "grata_fixed_lr": Method(GraTaInferer, _GRATA - {"dynamic_lr"}, {"dynamic_lr": False}),
}


def make_inferer(method: str, settings: Mapping[str, Any] | None = None) -> Inferer:
    """The inferer of ``method`` with the shared ``settings`` it takes (``SHARED_DEFAULTS`` unless given).

    Raises:
        ValueError: an unknown method, a setting that no method takes, or one the method fixes.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {tuple(METHODS)}.")
    settings = {**SHARED_DEFAULTS, **(settings or {})}
    known = frozenset().union(*(m.takes | set(m.fixed) for m in METHODS.values()))
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"Unknown settings {unknown}: no method takes them (see grata_monai.bench.methods)."
        )
    try:
        return METHODS[method].make(settings)
    except ValueError as e:
        raise ValueError(f"{method}: {e}") from e
