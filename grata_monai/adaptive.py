"""The shared machinery of test-time adaptation: adapt a copy of the network on each volume, then infer.

Called like every MONAI inferer, ``inferer(inputs, network)``, under the host's ``no_grad``. Per
volume: a private copy of the network is configured (:func:`~grata_monai.norms.configure_model`),
adapted on patches of the body (:mod:`~grata_monai.sampling`) by the method's :meth:`~AdaptiveInferer.adapt_step`,
checked by the divergence guard (:mod:`~grata_monai.guard`), its normalization statistics settled on
the whole volume, and then MONAI's ``SlidingWindowInferer`` runs with it. The logits carry the
volume's audit report (:mod:`~grata_monai.audit`). The methods are subclasses:
:class:`~grata_monai.inferer.GraTaInferer` and the baselines of :mod:`grata_monai.baselines`.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type, convert_to_tensor
from torch import nn

from grata_monai import defaults
from grata_monai.alignment import StepRecord
from grata_monai.audit import VolumeReport, attach_reports, checksum, to_host
from grata_monai.domain import foreground_entropies, histogram_distance, volume_weight
from grata_monai.foreach import clones, copy_
from grata_monai.graphs import CapturedPasses
from grata_monai.guard import DivergenceGuard, Signals, all_finite, signals
from grata_monai.norms import (
    PARAM_SCOPES,
    batch_norm_moments,
    batch_norm_statistics,
    blend_batch_norm_statistics,
    blended_statistics,
    configure_model,
    load_batch_norm_statistics,
    norm_layers,
    settle_batch_norm_statistics,
    use_test_statistics,
)
from grata_monai.pairs import PairedPasses
from grata_monai.sampling import body_patches, windows
from grata_monai.stacked_norms import StatisticsPasses, can_stack
from grata_monai.turns import TURNS

__all__ = ["NORM_STATS", "AdaptiveInferer", "Episode", "check_inputs", "unwrap_network"]

NORM_STATS = (
    "volume",
    "source",
    "auto",
    "entropy",
)  # how the inference statistics are chosen (see AdaptiveInferer)


def unwrap_network(network: Any) -> nn.Module:
    """Return the ``nn.Module`` behind ``network`` (MONAI Deploy passes a wrapper with ``.predictor``)."""
    if not isinstance(network, nn.Module) and isinstance(
        getattr(network, "predictor", None), nn.Module
    ):
        network = network.predictor
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"Expected a torch nn.Module (or a wrapper with .predictor), got {type(network).__name__}."
        )
    return network


def check_inputs(inputs: torch.Tensor, network: nn.Module, spatial_dims: int) -> torch.Tensor:
    """Validate ``inputs`` (B, C, *spatial) for ``network``; return them in the network's floating dtype.

    Raises:
        RuntimeError: called under ``torch.inference_mode()``, where gradients cannot come back.
        ValueError: wrong number of dims or channels, an empty batch, or non-finite voxels.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "test-time adaptation needs gradients: call the inferer under torch.no_grad(), not torch.inference_mode()."
        )
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != spatial_dims + 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(
            f"inputs must be a batch shaped (B, C, *spatial) with {spatial_dims} spatial dims to match roi_size; "
            f"got {shape}."
        )
    if min(inputs.shape) == 0:
        raise ValueError(f"inputs are empty: shape {tuple(inputs.shape)}.")
    conv = next(
        (m for m in network.modules() if _layer_name(m) in ("Conv1d", "Conv2d", "Conv3d")), None
    )
    if conv is not None and inputs.shape[1] != conv.weight.shape[1] * conv.groups:
        expected = conv.weight.shape[1] * conv.groups
        raise ValueError(
            f"inputs have {inputs.shape[1]} channel(s); the network expects {expected}."
        )
    inputs = inputs.to(
        next((p.dtype for p in network.parameters()), torch.float32)
    )  # integer images are cast
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or Inf voxels; clean or mask them before inference.")
    return inputs


@dataclass
class Episode:
    """The adapted state: a working copy of the network, its adapted parameters and optimizer.
    ``passes`` runs the network in the adaptation: the network itself, or its CUDA graphs."""

    source: nn.Module
    network: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    rng: np.random.RandomState
    passes: nn.Module
    state: dict = field(default_factory=dict)  # method-specific state, e.g. the losses


@dataclass(eq=False)
class _Kept:
    """What a working copy keeps from one volume to the next, so a reused copy is reset without
    walking its modules again. Held per copy by a weak key: nothing here references the copy itself."""

    state: list[torch.Tensor]  # its parameters and buffers, in ``state_dict`` order
    params: list[nn.Parameter] = field(default_factory=list)  # the adapted ones, once configured
    norms: list[nn.Module] = field(default_factory=list)  # its norm layers
    optimizer: torch.optim.Optimizer | None = None
    graphs: CapturedPasses | None = None
    statistics: StatisticsPasses | None = None


class AdaptiveInferer(Inferer):
    """Adapt a copy of the network on patches of each volume, then infer with sliding windows.

    The host's network is never modified: each volume (episodic) or each stream (continual) adapts
    a private copy, so hosts may share one network across requests and threads. A method is a
    subclass that implements :meth:`adapt_step`.

    Args:
        roi_size: sliding-window size, also the size of the adaptation patches.
        sw_batch_size: windows per forward pass.
        overlap: window overlap.
        steps: adaptation steps per volume.
        patches_per_step: patches sampled from the volume for each step (one batch).
        lr0: base learning rate of the optimizer.
        optimizer: ``"adam"`` (paper) or ``"sgd"``.
        episodic: True resets to the source weights for every volume; False adapts continually
            across calls until :meth:`reset`.
        amp: bfloat16 autocast on CUDA.
        seed: seed of patch sampling and augmentation (reset for every volume when episodic).
        sigmoid: multi-label sigmoid outputs instead of softmax (losses and guard).
        foreground_threshold: patch centres are drawn from voxels above this fraction of the
            volume's intensity range (the body rather than air).
        norm_stats: ``"volume"`` settles BatchNorm statistics once per volume (from non-overlapping
            windows) so outputs do not depend on ``sw_batch_size``; ``"source"`` keeps the source
            model's running statistics at inference; ``"auto"`` blends the two by the volume's
            distance from the source domain (:mod:`grata_monai.domain`): the source's for
            in-domain volumes, the volume's for shifted ones (docs/reliability.md); ``"entropy"``
            predicts with each blend weight of ``statistics_candidates`` and keeps the prediction
            with the lowest foreground entropy (:func:`grata_monai.domain.foreground_entropy`; the
            bundle's rule: it needs no source data).
        statistics_candidates: the blend weights of the volume's own statistics that ``"entropy"``
            tries (0: the source's, 1: the volume's).
        reference_histogram: the source training data's intensity histogram
            (``grata-monai reference``), needed by ``"auto"``.
        patch_size: the size of the adaptation patches; None: ``roi_size``.
        settle_windows: settle the volume's statistics on only this many windows, those with the
            most body (``sampling.windows``), and with ``"entropy"`` compare the candidates on these
            windows and then predict the volume once; None: settle on all windows and compare the
            candidates' predictions of the whole volume.
        blend_range: the histogram distances where ``"auto"`` starts and ends blending.
        adapt_params: which parameters adapt, from ``norms.PARAM_SCOPES`` (``"norm"``: the paper's
            norm-layer affine parameters).
        cuda_graphs: on CUDA, run the adaptation's network passes as CUDA graphs, captured once per
            working copy (:mod:`grata_monai.graphs`), and the statistics rule's batched passes too,
            each kind captured the second time it comes (:mod:`grata_monai.stacked_norms`); False:
            eagerly. No effect on a CPU.
        channels_last: on CUDA, the working copy's weights in channels-last memory format
            (``torch.channels_last_3d`` for 3-D windows, ``torch.channels_last`` for 2-D), where
            cuDNN's convolutions are faster; the same values, so the same outputs up to rounding.
            No effect on a CPU.
        pair_patches: on a CPU, run each adaptation pass of a single patch as two copies of it:
            the same outputs and gradients, through PyTorch's faster convolutions for small
            patches (:mod:`grata_monai.pairs`). No effect on other devices.
        guard: check the adaptation on held-out patches (:mod:`grata_monai.guard`) and fall back
            to the unadapted weights for the volume when it diverged or got worse (continual mode:
            reset to the source weights); the reason is in the volume's report. True: a
            ``DivergenceGuard()`` with its default thresholds; a ``DivergenceGuard``: those
            thresholds; False: no guard.
        mode, sigma_scale, padding_mode, cval, sw_device, device, progress, cache_roi_weight_map,
            cpu_thresh, buffer_steps, buffer_dim, with_coord: passed to MONAI's
            ``SlidingWindowInferer`` (same meaning and defaults); ``sw_device`` is also where the
            adaptation runs.
    """

    method = "adaptive"
    sync_ranks = False  # see GraTaInferer

    def __init__(
        self,
        roi_size: Sequence[int] | int = defaults.ROI_SIZE,
        sw_batch_size: int = defaults.SW_BATCH_SIZE,
        overlap: Sequence[float] | float = defaults.OVERLAP,
        *,
        steps: int = defaults.STEPS,
        patches_per_step: int = defaults.PATCHES_PER_STEP,
        lr0: float = defaults.LR0,
        optimizer: str = "adam",
        episodic: bool = defaults.EPISODIC,
        amp: bool = defaults.AMP,
        seed: int = defaults.SEED,
        sigmoid: bool = False,
        foreground_threshold: float = 0.1,
        norm_stats: str = "volume",
        statistics_candidates: Sequence[float] = defaults.STATISTICS_CANDIDATES,
        reference_histogram: Sequence[float] | None = None,
        patch_size: Sequence[int] | None = None,
        settle_windows: int | None = None,
        blend_range: Sequence[float] = defaults.BLEND_RANGE,
        adapt_params: str = "norm",
        guard: bool | DivergenceGuard = True,
        cuda_graphs: bool = defaults.CUDA_GRAPHS,
        channels_last: bool = defaults.CHANNELS_LAST,
        pair_patches: bool = False,
        mode: str = "constant",
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: str = "constant",
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        cache_roi_weight_map: bool = False,
        cpu_thresh: int | None = None,
        buffer_steps: int | None = None,
        buffer_dim: int = -1,
        with_coord: bool = False,
    ) -> None:
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}.")
        if norm_stats not in NORM_STATS:
            raise ValueError(f"norm_stats must be one of {NORM_STATS}, got {norm_stats!r}.")
        if not statistics_candidates or any(not 0 <= w <= 1 for w in statistics_candidates):
            raise ValueError(
                f"statistics_candidates must be weights in [0, 1], got {statistics_candidates}."
            )
        if norm_stats == "auto" and not reference_histogram:
            raise ValueError(
                "norm_stats='auto' needs reference_histogram: the source data's (grata-monai reference)."
            )
        if not 0 <= blend_range[0] < blend_range[1]:
            raise ValueError(
                f"blend_range must be (low, high) with 0 <= low < high, got {blend_range}."
            )
        if adapt_params not in PARAM_SCOPES:
            raise ValueError(
                f"Unknown parameter scope {adapt_params!r}; choose from {PARAM_SCOPES}."
            )
        if settle_windows is not None and settle_windows < 1:
            raise ValueError(f"settle_windows must be None (all) or >= 1, got {settle_windows}.")
        if steps < 0 or patches_per_step < 1:
            raise ValueError(
                f"Need steps >= 0 and patches_per_step >= 1, got {steps} and {patches_per_step}."
            )
        flags = {
            "episodic": episodic,
            "amp": amp,
            "sigmoid": sigmoid,
            "cuda_graphs": cuda_graphs,
            "channels_last": channels_last,
            "pair_patches": pair_patches,
        }
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}.")
        if not isinstance(guard, (bool, DivergenceGuard)):
            raise ValueError(
                f"guard must be True, False or a DivergenceGuard, got {type(guard).__name__}."
            )
        self.sliding = SlidingWindowInferer(
            roi_size=roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=mode,
            sigma_scale=sigma_scale,
            padding_mode=padding_mode,
            cval=cval,
            sw_device=sw_device,
            device=device,
            progress=progress,
            cache_roi_weight_map=cache_roi_weight_map,
            cpu_thresh=cpu_thresh,
            buffer_steps=buffer_steps,
            buffer_dim=buffer_dim,
            with_coord=with_coord,
        )
        self.roi_size = tuple(self.sliding.roi_size)
        self.steps, self.patches_per_step, self.lr0 = steps, patches_per_step, lr0
        self.optimizer, self.episodic, self.amp, self.seed = optimizer, episodic, amp, seed
        self.sigmoid, self.foreground_threshold, self.norm_stats = (
            sigmoid,
            foreground_threshold,
            norm_stats,
        )
        self.adapt_params, self.blend_range = (
            adapt_params,
            (float(blend_range[0]), float(blend_range[1])),
        )
        self.reference_histogram = (
            [float(v) for v in reference_histogram] if reference_histogram else None
        )
        self.statistics_candidates = tuple(float(w) for w in statistics_candidates)
        self.settle_windows = settle_windows
        self.patch_size = tuple(patch_size) if patch_size is not None else self.roi_size
        self.guard = (
            guard if isinstance(guard, DivergenceGuard) else DivergenceGuard() if guard else None
        )
        self.cuda_graphs, self.pair_patches = cuda_graphs, pair_patches
        self.channels_last = channels_last
        self._episode: Episode | None = None  # the continual state
        self._lock = threading.Lock()
        self._idle = weakref.WeakKeyDictionary()  # per source network: working copies not in use
        self._kept: weakref.WeakKeyDictionary[nn.Module, _Kept] = weakref.WeakKeyDictionary()
        self._pool_lock = threading.Lock()

    # --- the method: configure, adapt, reset ---------------------------------------------------
    def configure(self, source: nn.Module, device: torch.device) -> Episode:
        """A fresh episode: a copy of ``source`` with only its norm affine parameters trainable."""
        network = self.working_copy(source, device)
        kept = self._kept[network]
        if not kept.params:  # a new copy: freeze all but the adapted parameters
            kept.params, kept.norms = (
                configure_model(network, self.adapt_params),
                norm_layers(network),
            )
        else:  # a reused copy keeps them frozen
            use_test_statistics(network, kept.norms)
        params = kept.params
        optimizer = self.optimizer_for(network, params, device)
        passes = network
        if self.cuda_graphs and device.type == "cuda":
            kept.graphs = kept.graphs or CapturedPasses(network, params)
            passes = kept.graphs
        elif self.pair_patches and device.type == "cpu":
            passes = PairedPasses(network)
        rng = np.random.RandomState(self.seed)
        return Episode(source, network, params, optimizer, rng, passes)

    def optimizer_for(
        self, network: nn.Module, params: list[nn.Parameter], device: torch.device
    ) -> torch.optim.Optimizer:
        """An optimizer over the working copy's ``params`` in the state of a new one. It is kept
        with the copy: Adam's state is zeroed in place (a new Adam's starts at zero), another
        optimizer's is dropped."""
        cuda, kept = device.type == "cuda", self._kept[network]
        optimizer = kept.optimizer
        if optimizer is None:  # the copy's params are kept with it, so its optimizer holds them
            opt_cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD
            optimizer = kept.optimizer = opt_cls(params, lr=self.lr0, fused=cuda or None)
        elif isinstance(optimizer, torch.optim.Adam):
            state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
            if state:  # empty until the first step
                torch._foreach_zero_(state)
        else:
            optimizer.state.clear()
        for group in optimizer.param_groups:  # on CUDA a tensor rate: a fused step with it, set
            # by GraTa, never waits (given to the constructor, it would be read for a range check)
            group["lr"] = torch.full((), self.lr0, device=device) if cuda else self.lr0
        return optimizer

    def working_copy(self, source: nn.Module, device: torch.device) -> nn.Module:
        """An idle copy of ``source`` on ``device``, its parameters and buffers set to the source's
        (a fresh copy when none is idle). Episodic calls give theirs back when the volume is done
        (:meth:`release`), so calls running at once never share a copy and each is reused instead
        of copied afresh."""
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        with self._pool_lock:
            idle = self._idle.setdefault(source, [])
            network = next((n for n in idle if _device_of(self._kept[n]) == device), None)
            if network is not None:
                idle.remove(network)
        if network is None:
            network = copy.deepcopy(source).to(device, memory_format=self._memory_format(device))
            with self._pool_lock:
                self._kept[network] = _Kept(list(network.state_dict().values()))
            return network
        with torch.no_grad():
            copy_(self._kept[network].state, [t.to(device) for t in source.state_dict().values()])
        return network

    def _memory_format(self, device: torch.device) -> torch.memory_format:
        """The working copy's memory format on ``device`` (see ``channels_last``)."""
        if not (self.channels_last and device.type == "cuda"):
            return torch.preserve_format
        return torch.channels_last_3d if len(self.roi_size) == 3 else torch.channels_last

    def _turn(self, device: torch.device) -> contextlib.AbstractContextManager:
        """A running turn on CUDA, where another thread's inferer may capture CUDA graphs
        (:mod:`grata_monai.turns`); nothing on a CPU."""
        return TURNS.running() if device.type == "cuda" else contextlib.nullcontext()

    def release(self, episode: Episode) -> None:
        """Give ``episode``'s working copy back for the next volume (episodic calls, once done)."""
        with self._pool_lock:
            self._idle.setdefault(episode.source, []).append(episode.network)

    @abstractmethod
    def adapt_step(self, episode: Episode, x: torch.Tensor) -> StepRecord:
        """One adaptation step of the method on the patch batch ``x``; returns its record for the report."""

    def descend(self, episode: Episode, loss: torch.Tensor) -> StepRecord:
        """A plain optimizer step on ``loss`` with the fixed ``lr0`` (the gradient baselines' update)."""
        episode.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        episode.optimizer.step()
        episode.optimizer.zero_grad(set_to_none=True)
        loss = loss.detach()  # filled, not copied from the host: copies to a GPU wait for it
        nan = torch.full_like(loss, float("nan"))
        return StepRecord(loss, nan, nan, torch.full_like(loss, self.lr0))

    def reset(self) -> None:
        """Drop the continually adapted state; the next call starts from the source weights."""
        with self._lock:
            self._episode = None

    def settings(self) -> dict:
        """The method's settings, for reports."""
        keys = (
            "roi_size",
            "steps",
            "patches_per_step",
            "lr0",
            "optimizer",
            "episodic",
            "amp",
            "seed",
            "norm_stats",
        )
        keys += (
            "adapt_params",
            "sigmoid",
            "blend_range",
            "statistics_candidates",
            "patch_size",
            "settle_windows",
            "cuda_graphs",
            "channels_last",
            "pair_patches",
        )
        return {
            "method": self.method,
            **{k: getattr(self, k) for k in keys},
            "guard": self.guard is not None,
        }

    # --- one volume -----------------------------------------------------------------------------
    def episode_for(self, source: nn.Module, device: torch.device) -> Episode:
        """A fresh episode (episodic), else the continual one (fresh for a new source network)."""
        if self.episodic:
            return self.configure(source, device)
        if self._episode is None or self._episode.source is not source:
            self._episode = self.configure(source, device)
        return self._episode

    def adapt(
        self, episode: Episode, volume: torch.Tensor, device: torch.device, report: VolumeReport
    ) -> Episode:
        """Run the adaptation steps on ``volume`` (C, *spatial); return the episode to infer with,
        rolled back (or, continual, replaced by a fresh one) when the guard fires."""
        if self.steps == 0:
            return episode
        # a continual episode left its norm layers in inference mode
        use_test_statistics(episode.network, self._kept[episode.network].norms)
        sample = body_patches(
            volume,
            self.patch_size,
            self.patches_per_step,
            episode.rng,
            device,
            self.foreground_threshold,
        )
        checks = []  # the guard's values, read with the steps' after the last step
        if self.guard is not None:
            heldout = sample()
            theta0 = clones(episode.params)
            checks.append(signals(episode.passes, heldout, self.sigmoid))
        records = [self.adapt_step(episode, sample()) for _ in range(self.steps)]
        if self.guard is not None:
            checks += [signals(episode.passes, heldout, self.sigmoid), all_finite(episode.params)]
        report.steps, checks = _read(records, checks)
        if self.guard is None:
            return episode
        before, after, finite = Signals.of(checks[0]), Signals.of(checks[1]), checks[2][0] > 0
        losses = [s["aux_loss"] for s in report.steps]
        report.guard = self.guard.decide(before, after, finite, losses, self.sync_ranks, device)
        if report.guard is None:
            return episode
        if not self.episodic:
            self._episode = self.configure(episode.source, device)
            return self._episode
        with torch.no_grad():
            torch._foreach_copy_(episode.params, theta0)
        return episode

    def settle(
        self, episode: Episode, volume: torch.Tensor, device: torch.device, report: VolumeReport
    ) -> None:
        """Fix the normalization statistics used at inference: the whole volume's, the source's, or
        (``"auto"``) a blend weighted by the volume's distance from the source domain, in ``report``."""
        weight = 1.0 if self.norm_stats == "volume" else 0.0
        if self.norm_stats == "auto":
            report.domain_distance = histogram_distance(volume, self.reference_histogram)
            weight = volume_weight(report.domain_distance, self.blend_range)
        if weight > 0:
            self.settle_volume(episode.network, self.volume_windows(volume, device), device)
        blend_batch_norm_statistics(episode.network, episode.source, weight)
        episode.network.eval()
        report.volume_statistics_weight = weight

    def volume_windows(self, volume: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The windows the volume's statistics come from (``settle_windows`` of them), as one batch."""
        return torch.cat(list(windows(volume, self.roi_size, device, self.settle_windows)))

    def settle_volume(self, network: nn.Module, tiles: torch.Tensor, device: torch.device) -> None:
        """Set ``network``'s BatchNorm statistics to the mean of the windows' ``tiles`` own. Eager
        networks on CUDA take them in batches as large as the statistics rule's passes
        (:class:`~grata_monai.stacked_norms.StatisticsPasses`), others one at a time; the
        statistics are the same."""
        passes = self.statistics_passes(network, device)
        if passes is not None:
            passes.settle(tiles.split(self.sliding.sw_batch_size * len(self.statistics_candidates)))
        else:
            settle_batch_norm_statistics(network, tiles.split(1))

    def statistics_passes(
        self, network: nn.Module, device: torch.device
    ) -> StatisticsPasses | None:
        """The working copy ``network``'s batched statistics passes (kept with it; on CUDA with
        ``cuda_graphs``, replayed from CUDA graphs), or None where the passes loop: TorchScript
        networks, and CPUs, where the loop is faster."""
        if not _stacks(network, device):
            return None
        kept = self._kept[network]
        kept.statistics = kept.statistics or StatisticsPasses(network, graphs=self.cuda_graphs)
        return kept.statistics

    def least_uncertain(
        self,
        episode: Episode,
        batch: torch.Tensor,
        volume: torch.Tensor,
        device: torch.device,
        report: VolumeReport,
    ) -> torch.Tensor:
        """``norm_stats="entropy"``: the logits of the blend of ``statistics_candidates`` with the lowest
        foreground entropy; every candidate's entropy and the weight kept go into ``report``. With
        ``settle_windows`` the candidates are compared on those windows, then the volume is predicted
        once. Eager networks on CUDA predict all candidates in one pass
        (:mod:`grata_monai.stacked_norms`), others one candidate at a time."""
        network, weights = episode.network, self.statistics_candidates
        tiles = self.volume_windows(volume, device)
        self.settle_volume(network, tiles, device)
        source = batch_norm_moments(episode.source)  # read only
        passes = self.statistics_passes(network, device)
        run = (
            (lambda f: self.sliding(batch, f))
            if self.settle_windows is None
            else lambda f: f(tiles)
        )
        if passes is not None:  # the stacked passes leave the layers' statistics as settled
            own = batch_norm_moments(network)
            with passes.stacked(*passes.blends(source, weights)) as predict:
                outputs = list(run(predict).chunk(len(weights), 1))
        else:  # one set loaded at a time, so the settled statistics are copied first
            own = batch_norm_statistics(network)
            candidates = [blended_statistics(source, own, w) for w in weights]
            outputs = []
            for statistics in candidates:
                load_batch_norm_statistics(network, statistics)
                outputs.append(run(network))
        entropies = foreground_entropies(outputs, self.sigmoid)
        report.statistics_entropy = {f"{w:g}": e for w, e in zip(weights, entropies)}
        best = min(range(len(weights)), key=entropies.__getitem__)
        report.volume_statistics_weight = weights[best]
        if self.settle_windows is None:
            return outputs[best]
        load_batch_norm_statistics(network, blended_statistics(source, own, weights[best]))
        return self.sliding(batch, network)

    def infer_volume(
        self, batch: torch.Tensor, source: nn.Module, device: torch.device
    ) -> tuple[torch.Tensor, VolumeReport]:
        """Adapt to the single volume of ``batch`` (1, C, *spatial); return its logits and report."""
        volume = batch[0]
        amp = self.amp and device.type == "cuda"  # bfloat16 autocast on CUDA only
        graphs = self.cuda_graphs and device.type == "cuda"
        paired = self.pair_patches and device.type == "cpu"
        last = self.channels_last and device.type == "cuda"
        used = {"amp": amp, "cuda_graphs": graphs, "channels_last": last, "pair_patches": paired}
        settings = {**self.settings(), **used}
        report = VolumeReport(
            self.method,
            settings,
            device=str(device),
            autocast="bfloat16" if amp else "off",
            source_sha256=checksum(source),
        )
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
        start = time.perf_counter()
        episode = self.episode_for(
            source, device
        )  # copied under the host's no_grad: leaf parameters
        with torch.enable_grad(), autocast:
            episode = self.adapt(episode, volume, device, report)
        report.adapt_seconds = _seconds_since(start, device)
        with torch.no_grad(), autocast:
            if self.norm_stats == "entropy":
                logits = self.least_uncertain(episode, batch, volume, device, report)
            else:
                self.settle(episode, volume, device, report)
                logits = self.sliding(batch, episode.network)
        report.total_seconds = _seconds_since(start, device)
        if self.episodic:
            self.release(episode)
        return logits, report

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> MetaTensor:
        """Adapt to each volume of the batch ``inputs``; return the sliding-window logits, with one
        report per volume in ``meta[audit.REPORT_KEY]``."""
        source = unwrap_network(network)
        # the volumes without their metadata: MetaTensor indexing and ops are slow in the hot loop
        volumes = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        device = _adaptation_device(volumes, source, self.sliding.sw_device)
        # a continual call waits for the stream's lock before it takes a turn on the GPU
        with contextlib.nullcontext() if self.episodic else self._lock, self._turn(device):
            volumes = check_inputs(volumes, source, len(self.roi_size))
            results = [
                self.infer_volume(volumes[i : i + 1], source, device) for i in range(len(volumes))
            ]
            tensors = [convert_to_tensor(r[0], track_meta=False) for r in results]
            logits = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        if isinstance(inputs, MetaTensor):  # the batch's metadata, whichever pass gave the logits
            logits = convert_to_dst_type(logits, inputs, device=logits.device)[0]
        return attach_reports(logits, [r[1] for r in results])


def _layer_name(module: nn.Module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__  # eager or TorchScript


def _adaptation_device(
    inputs: torch.Tensor, network: nn.Module, sw_device: torch.device | str | None
) -> torch.device:
    """``sw_device`` when set, else CUDA when the inputs are there, else the network's device."""
    if sw_device is not None:
        return torch.device(sw_device)
    if inputs.is_cuda:
        return inputs.device
    param = next(network.parameters(), None)
    return param.device if param is not None else inputs.device


def _stacks(network: nn.Module, device: torch.device) -> bool:
    """Batched BatchNorm passes for ``network``: on CUDA, where they save kernel launches (on a CPU
    the loop of passes is faster), and for eager networks only."""
    return device.type == "cuda" and can_stack(network)


def _read(
    records: list[StepRecord], checks: list[torch.Tensor]
) -> tuple[list[dict], list[list[float]]]:
    """The steps' records as report entries, and the values of ``checks``, in one read."""
    names = [f.name for f in fields(StepRecord)]
    values = to_host([getattr(r, n) for r in records for n in names] + checks)
    steps = [
        {n: values[i * len(names) + j][0] for j, n in enumerate(names)} for i in range(len(records))
    ]
    return steps, values[len(steps) * len(names) :]


def _device_of(kept: _Kept) -> torch.device | None:
    return kept.state[0].device if kept.state else None


def _seconds_since(start: float, device: torch.device) -> float:
    """Seconds since ``start`` once this thread's CUDA stream has finished (other streams run on)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return time.perf_counter() - start
