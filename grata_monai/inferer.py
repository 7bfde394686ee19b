"""Inferers that adapt a network on each incoming volume, then run sliding-window inference.

:class:`AdaptiveInferer` holds the machinery every method shares — a private working copy of the
host's network, norm-layer configuration, patch sampling from the body, per-volume normalization
statistics and sliding-window inference — and :class:`GraTaInferer` adds the GraTa update. The
baselines in :mod:`grata_monai.baselines` reuse the same machinery, so comparisons are fair.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import RandCropByPosNegLabel, SpatialPad
from monai.transforms.utils import map_binary_to_indices
from monai.utils import convert_to_tensor
from torch import nn

from grata_monai.alignment import StepRecord, grata_step
from grata_monai.distributed import any_across_ranks, average_across_ranks
from grata_monai.guard import DivergenceGuard, measure
from grata_monai.losses import WEAK_TRANSFORMS, ConsistencyLoss, EntropyLoss
from grata_monai.norms import configure_model, settle_batch_norm_statistics, use_test_statistics

__all__ = ["VolumeReport", "Episode", "AdaptiveInferer", "GraTaInferer", "unwrap_network", "checksum"]


def _layer_name(module: nn.Module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def unwrap_network(network: Any) -> nn.Module:
    """Return the ``nn.Module`` behind ``network`` (MONAI Deploy passes a wrapper with ``.predictor``)."""
    if not isinstance(network, nn.Module) and isinstance(getattr(network, "predictor", None), nn.Module):
        network = network.predictor
    if not isinstance(network, nn.Module):
        raise TypeError(f"Expected a torch nn.Module (or a wrapper with .predictor), got {type(network).__name__}.")
    return network


_CHECKSUMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def checksum(network: nn.Module) -> str:
    """SHA-256 of the network's parameters and buffers (names, dtypes and values).

    Cached per network until any of its tensors is modified in place (tensor version counters).
    """
    state = network.state_dict()
    versions = tuple(t._version for t in state.values())
    cached = _CHECKSUMS.get(network)
    if cached is not None and cached[0] == versions:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    _CHECKSUMS[network] = (versions, digest.hexdigest())
    return digest.hexdigest()


@dataclass
class VolumeReport:
    """What the inferer did for one volume (the audit record; see docs/reliability.md)."""

    method: str
    settings: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    guard: str | None = None
    adapt_seconds: float = 0.0
    total_seconds: float = 0.0
    device: str = ""
    source_sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Episode:
    """The adapted state: a working copy of the network, its adapted parameters and optimizer."""

    source: nn.Module
    network: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    rng: np.random.RandomState
    state: dict = field(default_factory=dict)  # method-specific state, e.g. the losses


class AdaptiveInferer(Inferer):
    """Adapt a copy of the network on patches of each volume, then infer with sliding windows.

    The host's network is never modified: each volume (episodic) or each stream (continual) adapts
    a private copy, so hosts may share one network across requests and threads.

    Args:
        roi_size, sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, sw_device, device,
            progress: as in ``monai.inferers.SlidingWindowInferer`` (the adaptation patches are
            ``roi_size`` crops too).
        steps: adaptation steps per volume.
        patches_per_step: patches sampled from the volume for each step (one batch).
        lr0: base learning rate of the optimizer.
        optimizer: ``"adam"`` (paper) or ``"sgd"``.
        episodic: True resets to the source weights for every volume; False adapts continually
            across calls until :meth:`reset`.
        amp: bfloat16 autocast on CUDA.
        seed: seed of patch sampling and augmentation (reset for every volume when episodic).
        foreground_threshold: patch centres are drawn from voxels above this fraction of the
            volume's intensity range (the body rather than air).
        norm_stats: ``"volume"`` settles BatchNorm statistics once per volume (from non-overlapping
            windows) so outputs do not depend on ``sw_batch_size``; ``"source"`` keeps the source
            model's running statistics at inference.
        guard: check the adaptation on held-out patches (:mod:`grata_monai.guard`) and fall back
            to the unadapted weights for the volume when it diverged or got worse (continual mode:
            reset to the source weights). The reason is in the volume's report.
        guard_entropy_tolerance, guard_volume_ratio: the guard's thresholds.
    """

    method = "adaptive"
    sync_ranks = False  # see GraTaInferer

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        mode: str = "constant",
        sigma_scale: float = 0.125,
        padding_mode: str = "constant",
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        *,
        steps: int = 10,
        patches_per_step: int = 4,
        lr0: float = 1e-3,
        optimizer: str = "adam",
        episodic: bool = True,
        amp: bool = False,
        seed: int = 0,
        foreground_threshold: float = 0.1,
        norm_stats: str = "volume",
        guard: bool = True,
        guard_entropy_tolerance: float = 0.1,
        guard_volume_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}.")
        if norm_stats not in ("volume", "source"):
            raise ValueError(f"norm_stats must be 'volume' or 'source', got {norm_stats!r}.")
        if steps < 0 or patches_per_step < 1:
            raise ValueError(f"Need steps >= 0 and patches_per_step >= 1, got {steps} and {patches_per_step}.")
        self.sliding = SlidingWindowInferer(
            roi_size, sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, sw_device, device, progress
        )
        self.roi_size = tuple(self.sliding.roi_size)
        self.steps, self.patches_per_step, self.lr0 = steps, patches_per_step, lr0
        self.optimizer, self.episodic, self.amp, self.seed = optimizer, episodic, amp, seed
        self.foreground_threshold, self.norm_stats = foreground_threshold, norm_stats
        self.guard = DivergenceGuard(guard_entropy_tolerance, guard_volume_ratio) if guard else None
        self._episode: Episode | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    # --- the method-specific part --------------------------------------------------------------
    def adapt_step(self, episode: Episode, x: torch.Tensor) -> StepRecord | None:
        """One adaptation step on the patch batch ``x``; the base class adapts no weights."""
        return None

    def descend(self, episode: Episode, loss: torch.Tensor) -> StepRecord:
        """A plain optimizer step on ``loss`` with the fixed ``lr0`` (the gradient baselines' update)."""
        episode.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in episode.optimizer.param_groups:
            group["lr"] = self.lr0
        episode.optimizer.step()
        episode.optimizer.zero_grad(set_to_none=True)
        return StepRecord(loss.item(), float("nan"), float("nan"), self.lr0)

    def settings(self) -> dict:
        """The method's settings, for reports."""
        keys = ("roi_size", "steps", "patches_per_step", "lr0", "optimizer", "episodic", "amp", "seed", "norm_stats")
        return {"method": self.method, **{k: getattr(self, k) for k in keys}, "guard": self.guard is not None}

    # --- the shared machinery ------------------------------------------------------------------
    @property
    def last_reports(self) -> list[VolumeReport]:
        """The reports of the volumes of this thread's last call, in batch order."""
        return getattr(self._local, "reports", [])

    @property
    def last_report(self) -> VolumeReport | None:
        """The report of the last volume processed by this thread."""
        return self.last_reports[-1] if self.last_reports else None

    def reset(self) -> None:
        """Drop the continually adapted state; the next call starts from the source weights."""
        with self._lock:
            self._episode = None

    def _new_episode(self, source: nn.Module, device: torch.device) -> Episode:
        network = copy.deepcopy(source).to(device)
        params = configure_model(network)
        opt_cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD
        optimizer = opt_cls(params, lr=self.lr0)
        return Episode(source, network, params, optimizer, np.random.RandomState(self.seed))

    def patch_sampler(self, episode: Episode, volume: torch.Tensor, device: torch.device) -> Callable[[], torch.Tensor]:
        """A function drawing ``patches_per_step`` roi-sized patches of ``volume`` (C, *spatial) on
        ``device``, centred on the body (voxels above ``foreground_threshold`` of the range)."""
        volume = convert_to_tensor(SpatialPad(self.roi_size)(volume.to(device)), track_meta=False)
        low, high = volume[0].min(), volume[0].max()
        mask = (volume[0] > low + self.foreground_threshold * (high - low))[None]
        if not mask.any():
            mask = torch.ones_like(mask)
        fg, bg = map_binary_to_indices(mask, None, 0)
        crop = RandCropByPosNegLabel(self.roi_size, pos=1, neg=0, num_samples=self.patches_per_step)
        crop.set_random_state(state=episode.rng)

        def sample() -> torch.Tensor:
            patches = crop(volume, label=mask, fg_indices=fg, bg_indices=bg)
            return torch.stack([convert_to_tensor(p, track_meta=False) for p in patches])

        return sample

    def _windows(self, volume: torch.Tensor, device: torch.device):
        """Non-overlapping roi-sized windows covering ``volume`` (C, *spatial), one at a time."""
        volume = convert_to_tensor(SpatialPad(self.roi_size)(volume), track_meta=False)
        for s in dense_patch_slices(volume.shape[1:], self.roi_size, self.roi_size):
            yield volume[(slice(None), *s)][None].to(device)

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp and device.type == "cuda")

    def _check(self, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """Validate ``inputs`` for ``network``; return them in the network's floating dtype."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} adapts with gradients: call it under torch.no_grad(), "
                "not torch.inference_mode()."
            )
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != len(self.roi_size) + 2:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(
                f"inputs must be a batch shaped (B, C, *spatial) with {len(self.roi_size)} spatial dims "
                f"to match roi_size {self.roi_size}; got {shape}."
            )
        if min(inputs.shape) == 0:
            raise ValueError(f"inputs are empty: shape {tuple(inputs.shape)}.")
        conv = next((m for m in network.modules() if _layer_name(m) in ("Conv1d", "Conv2d", "Conv3d")), None)
        if conv is not None:
            expected = conv.weight.shape[1] * conv.groups
            if inputs.shape[1] != expected:
                raise ValueError(f"inputs have {inputs.shape[1]} channel(s); the network expects {expected}.")
        dtype = next((p.dtype for p in network.parameters()), torch.float32)
        inputs = inputs.to(dtype)  # integer or other-precision images are cast (documented)
        if not torch.isfinite(inputs).all():
            raise ValueError("inputs contain NaN or Inf voxels; clean or mask them before inference.")
        return inputs

    def _adapt_device(self, inputs: torch.Tensor, network: nn.Module) -> torch.device:
        if self.sliding.sw_device is not None:
            return torch.device(self.sliding.sw_device)
        if inputs.is_cuda:
            return inputs.device
        param = next(network.parameters(), None)
        return param.device if param is not None else inputs.device

    def _episode_for(self, source: nn.Module, device: torch.device) -> Episode:
        if self.episodic:
            return self._new_episode(source, device)
        if self._episode is None or self._episode.source is not source:
            self._episode = self._new_episode(source, device)
        return self._episode

    def _adapt(self, episode: Episode, volume: torch.Tensor, device: torch.device, report: VolumeReport) -> Episode:
        """Run the adaptation steps; return the episode to infer with (the guard may replace it)."""
        if self.steps == 0:
            return episode
        use_test_statistics(episode.network)  # a continual episode left them in inference mode
        sample = self.patch_sampler(episode, volume, device)
        if self.guard is not None:
            heldout = sample()
            theta0 = [p.detach().clone() for p in episode.params]
            before = measure(episode.network, heldout)
        for _ in range(self.steps):
            record = self.adapt_step(episode, sample())
            if record is not None:
                report.steps.append(asdict(record))
        if self.guard is None:
            return episode
        after = measure(episode.network, heldout)
        report.guard = self.guard.check(before, after, episode.params, [s["aux_loss"] for s in report.steps])
        if self.sync_ranks and any_across_ranks(report.guard is not None, device):
            report.guard = report.guard or "the guard fired on another rank sharing this adapted state"
        if report.guard is None:
            return episode
        if not self.episodic:
            self._episode = self._new_episode(episode.source, device)
            return self._episode
        with torch.no_grad():
            torch._foreach_copy_(episode.params, theta0)
        return episode

    def _infer_volume(self, batch: torch.Tensor, source: nn.Module, device: torch.device) -> torch.Tensor:
        """Adapt to the single volume of ``batch`` (1, C, *spatial) and return its logits."""
        volume = convert_to_tensor(batch[0], track_meta=False)  # MetaTensor ops are slow in the hot loop
        report = VolumeReport(self.method, self.settings(), device=str(device), source_sha256=checksum(source))
        start = time.perf_counter()
        episode = self._episode_for(source, device)
        with torch.enable_grad(), self._autocast(device):
            episode = self._adapt(episode, volume, device, report)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        report.adapt_seconds = time.perf_counter() - start
        with torch.no_grad(), self._autocast(device):
            if self.norm_stats == "volume":
                settle_batch_norm_statistics(episode.network, self._windows(volume, device))
            else:
                for mine, theirs in zip(episode.network.buffers(), source.buffers()):
                    mine.copy_(theirs)  # adaptation forwards updated them; keep the source statistics
                episode.network.eval()
            logits = self.sliding(batch, episode.network)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        report.total_seconds = time.perf_counter() - start
        self._local.reports.append(report)
        return logits

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Adapt to each volume of the batch ``inputs`` and return its sliding-window logits."""
        source = unwrap_network(network)
        inputs = self._check(inputs, source)
        self._local.reports = []
        device = self._adapt_device(inputs, source)
        with contextlib.nullcontext() if self.episodic else self._lock:
            if len(inputs) == 1:
                return self._infer_volume(inputs, source, device)
            return torch.cat([self._infer_volume(inputs[i : i + 1], source, device) for i in range(len(inputs))])


class GraTaInferer(AdaptiveInferer):
    """GraTa: adapt norm-layer affine parameters by gradient alignment, then sliding-window inference.

    Args (besides :class:`AdaptiveInferer`'s):
        perturb_scale: scale of the perturbation theta - scale * g_a (1.0 in the paper).
        weak_transforms: weak transforms averaged into the pseudo-label (``losses.WEAK_TRANSFORMS``).
        sigmoid: multi-label sigmoid outputs instead of softmax.
        strong_prob: probability of each strong intensity augmentation.
        batch_views: predict the weak views of the pseudo-label in one batch (faster on GPUs).
        align: ablation switch; False takes the pseudo gradient at theta (no perturbation).
        dynamic_lr: ablation switch; False steps with the fixed ``lr0``.
        sync_ranks: continual adaptation shared by all ranks of the default process group: the
            aux and pseudo gradients are averaged across ranks before the cosine and the step
            (every rank must make the same number of steps).
    """

    method = "grata"

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        *args: Any,
        perturb_scale: float = 1.0,
        weak_transforms: Sequence[str] = WEAK_TRANSFORMS,
        sigmoid: bool = False,
        strong_prob: float = 0.5,
        batch_views: bool = False,
        align: bool = True,
        dynamic_lr: bool = True,
        sync_ranks: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(roi_size, sw_batch_size, overlap, *args, **kwargs)
        if sync_ranks and self.episodic:
            raise ValueError("sync_ranks shares one continually adapted state: set episodic=False.")
        self.sync_ranks = sync_ranks
        self.perturb_scale, self.weak_transforms, self.sigmoid = perturb_scale, tuple(weak_transforms), sigmoid
        self.strong_prob, self.align, self.dynamic_lr = strong_prob, align, dynamic_lr
        self.batch_views = batch_views
        ConsistencyLoss(self.weak_transforms)  # fail early on unknown weak transforms

    def settings(self) -> dict:
        keys = ("perturb_scale", "weak_transforms", "sigmoid", "strong_prob", "batch_views", "align", "dynamic_lr")
        keys += ("sync_ranks",)
        return {**super().settings(), **{k: getattr(self, k) for k in keys}}

    def adapt_step(self, episode: Episode, x: torch.Tensor) -> StepRecord:
        losses = episode.state.get("losses")
        if losses is None:
            consistency = ConsistencyLoss(
                self.weak_transforms, self.sigmoid, seed=None, prob=self.strong_prob, batch_views=self.batch_views
            )
            consistency.augment.set_random_state(state=episode.rng)
            losses = episode.state["losses"] = (EntropyLoss(self.sigmoid), consistency)
        return grata_step(
            episode.network,
            episode.params,
            episode.optimizer,
            x,
            *losses,
            lr0=self.lr0,
            perturb_scale=self.perturb_scale,
            align=self.align,
            dynamic=self.dynamic_lr,
            reduce=average_across_ranks if self.sync_ranks else None,
        )
