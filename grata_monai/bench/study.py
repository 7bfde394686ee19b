"""Study: named adaptation variants on the dev MR volumes and on in-domain CT, one model, one process.

Every variant (baselines, GraTa settings, the paper's preset) segments ``mr_test`` then ``ct_val``
(continual variants are reset before each split). Each row records the variant's full settings,
per-volume Dice per organ and GPU (or CPU) seconds per volume. The bundle default is then chosen
by :func:`choose`: the GraTa variant with the best MR mean among those that keep ``ct_val`` within
``ct_tolerance`` of source-only and lose no MR volume by more than ``volume_tolerance`` against
per-volume statistics. The winner's ablations (no alignment, fixed learning rate) run last.

Outputs: ``study.json`` (every row), ``study.md`` (tables) and ``study.png`` (each variant's gain over
per-volume statistics), plus ``results.json`` / ``results_ct.json`` in the benchmark's format with
the winner as ``grata`` (for ``grata-monai report``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from grata_monai import defaults
from grata_monai.bench import paths
from grata_monai.bench.benchmark import evaluate, summarize
from grata_monai.bench.common import (
    bundle_config,
    device_name,
    git_revision,
    load_bundle,
    names,
    pick_device,
    prepare,
)
from grata_monai.bench.methods import make_inferer

__all__ = [
    "BASELINES",
    "VARIANTS",
    "make",
    "choose",
    "run_study",
    "write_results",
    "write_study_md",
    "plot_study",
]

SPLITS = ("mr_test", "ct_val")
STEP_NOTE = (
    "> **What GraTa's step adds, and what the bundle is now.** This study ran before the "
    "post-processing and the statistics rule; its default (`grata_1x1e-3_auto`) is superseded. The "
    "step adds nothing measurable here (MR +0.02 over per-volume statistics) and nothing in "
    "[directions.md](directions.md) either (−0.01 to +0.01 on every set scored with and without it): "
    "the aux and pseudo gradients disagree, so the step stays tiny. The bundle's gain over a plain "
    'run is its post-processing and its statistics rule (`norm_stats="entropy"`), both in directions.md.'
)
# name -> (method, settings beyond the defaults). Steps/lr/params follow the calibration note and
# the last sweep: one small step barely moves the weights, so most variants take 10 steps.
BASELINES: dict[str, tuple[str, dict]] = {
    "source": ("source", {}),
    "norm_stats": ("norm_stats", {}),
    "norm_stats_auto": ("norm_stats", {"norm_stats": "auto"}),
    "tent_1x1e-3": ("tent", {"steps": 1}),
    "tent_10x1e-3": ("tent", {"steps": 10}),
    "tent_10x1e-2": ("tent", {"steps": 10, "lr0": 1e-2}),
    "memo_1x1e-3": ("memo", {"steps": 1}),
}
VARIANTS: dict[str, tuple[str, dict]] = {
    "grata_paper": ("grata", {"preset": "paper"}),
    "grata_1x1e-3": ("grata", {}),
    "grata_10x1e-3": ("grata", {"steps": 10}),
    "grata_10x1e-2": ("grata", {"steps": 10, "lr0": 1e-2}),
    "grata_30x1e-3": ("grata", {"steps": 30}),
    "grata_10x1e-3_p8": ("grata", {"steps": 10, "patches_per_step": 8}),
    "grata_10x1e-3_sgd": ("grata", {"steps": 10, "optimizer": "sgd", "lr0": 1e-2}),
    "grata_10x1e-3_sharp": ("grata", {"steps": 10, "temperature": 0.5}),
    "grata_10x1e-3_invariant": ("grata", {"steps": 10, "strong": "invariant"}),
    "grata_10x1e-3_inv_sharp": ("grata", {"steps": 10, "strong": "invariant", "temperature": 0.5}),
    "grata_10x1e-3_head": ("grata", {"steps": 10, "adapt_params": "norm+head"}),
    "grata_10x1e-4_all": ("grata", {"steps": 10, "lr0": 1e-4, "adapt_params": "all"}),
    "grata_continual_1x1e-3": ("grata", {"episodic": False}),
    "grata_1x1e-3_auto": ("grata", {"norm_stats": "auto"}),
    "grata_10x1e-3_auto": ("grata", {"steps": 10, "norm_stats": "auto"}),
    "grata_10x1e-3_inv_auto": ("grata", {"steps": 10, "strong": "invariant", "norm_stats": "auto"}),
}
ABLATIONS = {"no_align": {"align": False, "dynamic_lr": False}, "fixed_lr": {"dynamic_lr": False}}


def make(method: str, settings: dict[str, Any], reference: list[float] | None = None):
    """The inferer of ``method`` (source, norm_stats, tent, memo, grata) with ``settings``; variants
    with ``norm_stats="auto"`` get the bundle's ``reference`` histogram."""
    if settings.get("norm_stats") == "auto":
        settings = {"reference_histogram": reference, **settings}
    return make_inferer(method, settings)


def _row(
    name: str, method: str, settings: dict, network, volumes: dict, device, reference=None
) -> dict:
    inferer = make(method, settings, reference)
    evaluate(
        inferer, network, volumes["mr_test"][:1], device
    )  # warm-up (cudnn autotuning, allocator)
    row = {
        "variant": name,
        "method": method,
        "settings": getattr(inferer, "settings", lambda: {"method": "source"})(),
    }
    for split, vols in volumes.items():
        if hasattr(inferer, "reset"):
            inferer.reset()
        rows = evaluate(inferer, network, vols, device)
        row[split] = {"summary": summarize(rows), "volumes": rows}
    return row


def _mean(row: dict, split: str) -> float:
    return 100 * row[split]["summary"]["dice_mean"]


def _volume_means(row: dict, split: str = "mr_test") -> list[float]:
    return [100 * float(torch.tensor(v["dice"]).nanmean()) for v in row[split]["volumes"]]


def _worst_loss(row: dict, reference: dict) -> float:
    return min(a - b for a, b in zip(_volume_means(row), _volume_means(reference)))


def choose(
    rows: dict[str, dict], ct_tolerance: float = 0.5, volume_tolerance: float = 1.0
) -> tuple[str, bool]:
    """The GraTa variant with the best MR mean among the eligible ones (see the module docstring);
    returns its name and whether it was eligible (else: the best MR mean, flagged)."""
    source_ct, reference = _mean(rows["source"], "ct_val"), rows["norm_stats"]
    grata = [n for n in rows if n.startswith("grata") and n in VARIANTS]
    eligible = [
        n
        for n in grata
        if _mean(rows[n], "ct_val") >= source_ct - ct_tolerance
        and _worst_loss(rows[n], reference) >= -volume_tolerance
    ]
    pool = eligible or grata
    return max(pool, key=lambda n: _mean(rows[n], "mr_test")), bool(eligible)


def write_results(study: dict, out_dir: str | Path) -> None:
    """``results.json`` (MR) and ``results_ct.json`` in the benchmark's format from a study: the
    baselines, the best TENT, the chosen GraTa variant as ``grata``, its ablations and the paper's preset."""
    rows, winner = study["rows"], study["chosen"]
    names = {
        "source": "source",
        "norm_stats": "norm_stats",
        "tent": study["best_tent"],
        "memo": "memo_1x1e-3",
        "grata": winner,
    }
    names |= {f"grata_{a}": f"{winner}_{a}" for a in ABLATIONS if f"{winner}_{a}" in rows}
    names |= {"grata_paper": "grata_paper"} if "grata_paper" in rows else {}
    for split, file in (("mr_test", "results.json"), ("ct_val", "results_ct.json")):
        methods = {
            alias: {
                "summary": rows[n][split]["summary"],
                "settings": rows[n]["settings"],
                "volumes": rows[n][split]["volumes"],
            }
            for alias, n in names.items()
            if n in rows
        }
        result = {
            "device": study["device"],
            "git_revision": study["git_revision"],
            "data": {**study["data"], "key": split, "volumes": study["volumes"][split]},
            "settings": {
                "from": f"grata-monai study: {', '.join(f'{a}={n}' for a, n in names.items())}"
            },
            "methods": methods,
        }
        (Path(out_dir) / file).write_text(json.dumps(result, indent=1))


def write_study_md(study: dict, path: str | Path, figure: str = "study.png") -> None:
    """The study's tables as markdown: main table, per organ, per MR volume."""
    rows, reference, source = study["rows"], study["rows"]["norm_stats"], study["rows"]["source"]
    organs = defaults.ORGANS
    lines = [
        "# Adaptation study (dev volumes)",
        "",
        STEP_NOTE,
        "",
        f"Model: `{study['bundle']}` at revision `{study['git_revision']}`, on {study['device']}. "
        f"MR: {len(study['volumes']['mr_test'])} `mr_test` volumes; "
        f"CT: {len(study['volumes']['ct_val'])} `ct_val` volumes. "
        "Dice ×100 on the preprocessed 2×2×4 mm grid (MONAI `DiceMetric`). Δ: against per-volume statistics "
        "(`norm_stats`) on MR, against source-only on CT. s/vol: mean seconds per volume on the device "
        "(adaptation + inference, preprocessing excluded).",
        "",
        f"Command: `{study['command']}`",
        "",
        f"**Chosen (bundle default): `{study['chosen']}`**"
        + ("" if study["eligible"] else " (no variant met every rule: best MR mean)"),
        "",
        f"![gain over per-volume statistics]({figure})",
        "",
        "| variant | MR | Δ MR | worst MR volume Δ | CT | Δ CT | s/vol |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        mr, ct = _mean(row, "mr_test"), _mean(row, "ct_val")
        lines.append(
            f"| {name} | {mr:.2f} | {mr - _mean(reference, 'mr_test'):+.2f} | {_worst_loss(row, reference):+.2f} | "
            f"{ct:.2f} | {ct - _mean(source, 'ct_val'):+.2f} | {row['mr_test']['summary']['infer_s']:.3f} |"
        )
    lines += [
        "",
        "## Per organ (MR)",
        "",
        "| variant | " + " | ".join(organs) + " |",
        "|---" * (len(organs) + 1) + "|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{100 * d:.1f}" for d in row["mr_test"]["summary"]["dice_per_class"])
            + " |"
        )
    shown = ["source", "norm_stats", "norm_stats_auto", "grata_paper", study["chosen"]]
    shown = list(dict.fromkeys(n for n in shown if n in rows))
    lines += [
        "",
        "## Per MR volume (mean over organs)",
        "",
        "| volume | " + " | ".join(shown) + " |",
        "|---" * (len(shown) + 1) + "|",
    ]
    for i, vol in enumerate(study["volumes"]["mr_test"]):
        lines.append(
            f"| {vol} | " + " | ".join(f"{_volume_means(rows[n])[i]:.1f}" for n in shown) + " |"
        )
    lines += [
        "",
        "## Per CT volume (mean over organs)",
        "",
        "| volume | " + " | ".join(shown) + " |",
        "|---" * (len(shown) + 1) + "|",
    ]
    for i, vol in enumerate(study["volumes"]["ct_val"]):
        lines.append(
            f"| {vol} | "
            + " | ".join(f"{_volume_means(rows[n], 'ct_val')[i]:.1f}" for n in shown)
            + " |"
        )
    lines += ["", "Settings of every row: `study.json` (`rows.<variant>.settings`)."]
    Path(path).write_text("\n".join(lines) + "\n")


def plot_study(study: dict, path: str | Path) -> None:
    """Each variant's MR gain over per-volume statistics: mean (bar) and every volume (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = study["rows"]
    reference = _volume_means(rows["norm_stats"])
    names = [n for n in rows if n != "norm_stats"]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(names)), 4.5))
    for i, name in enumerate(names):
        gains = [a - b for a, b in zip(_volume_means(rows[name]), reference)]
        ax.bar(
            i,
            sum(gains) / len(gains),
            color="tab:orange" if name == study["chosen"] else "tab:blue",
            alpha=0.7,
        )
        ax.scatter([i] * len(gains), gains, s=8, color="k", zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("MR Dice gain over per-volume statistics (points)")
    ax.set_title("Adaptation variants on the dev MR volumes (orange: the bundle default)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_study(
    data_dir: str | None = None,
    bundle_dir: str | None = None,
    out_dir: str = "docs/benchmarks",
    variants: str | tuple | None = None,
    limit: int | None = None,
    device: str | None = None,
) -> dict:
    """Run the baselines and ``variants`` (default all of ``VARIANTS``) on ``mr_test`` and ``ct_val``;
    write ``study.json``, ``study.md``, ``study.png``, ``results.json`` and ``results_ct.json`` to ``out_dir``.

    Args:
        data_dir: folder with ``datalist.json`` (the abdomen set or its cache); default ``$GRATA_DATA_DIR/abdomen``.
        bundle_dir: the bundle (network, ``models/model.pt``, preprocessing); default ``$GRATA_BUNDLE_DIR``.
        out_dir: where the outputs go (overwritten: they are this command's own outputs).
        variants: comma-separated names from ``VARIANTS`` (a subset, e.g. for a quick check).
        limit: only the first ``limit`` volumes of each split.
        device: ``"cuda"`` / ``"cpu"``; CUDA when available by default.
    """
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bundle = paths.bundle_dir(bundle_dir)
    network, preprocessing, _ = load_bundle(bundle, dev)
    reference = bundle_config(bundle).get("reference_histogram")
    data = paths.data_dir(data_dir)
    volumes = {split: prepare(data, split, preprocessing, limit) for split in SPLITS}
    chosen_variants = names(variants) if variants else tuple(VARIANTS)
    unknown = set(chosen_variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"Unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}.")
    todo = {**BASELINES, **{n: VARIANTS[n] for n in chosen_variants}}
    rows = {}
    for name, (method, settings) in tqdm(todo.items(), desc="variants"):
        rows[name] = _row(name, method, settings, network, volumes, dev, reference)
    winner, eligible = choose(rows)
    method, settings = VARIANTS[winner]
    for ablation, switches in ABLATIONS.items():
        if "preset" not in settings:
            name = f"{winner}_{ablation}"
            rows[name] = _row(
                name, method, {**settings, **switches}, network, volumes, dev, reference
            )
    tent = max((n for n in rows if n.startswith("tent")), key=lambda n: _mean(rows[n], "mr_test"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": device_name(dev),
        "git_revision": git_revision(),
        "data": {"data_dir": str(data)},
    }
    study = {
        **meta,
        "bundle": str(bundle),
        "command": "grata-monai study " + " ".join(sys.argv[2:])
        if sys.argv[1:2] == ["study"]
        else "grata-monai study",
        "volumes": {s: [v["name"] for v in vols] for s, vols in volumes.items()},
        "chosen": winner,
        "eligible": eligible,
        "best_tent": tent,
        "rows": rows,
    }
    (out / "study.json").write_text(json.dumps(study, indent=1))
    plot_study(study, out / "study.png")
    write_study_md(study, out / "study.md")
    write_results(study, out)
    print(f"chosen: {winner} (eligible: {eligible}); best TENT: {tent}")
    for name, row in rows.items():
        print(
            f"{name:32s} MR {_mean(row, 'mr_test'):6.2f}  CT {_mean(row, 'ct_val'):6.2f}  "
            f"{row['mr_test']['summary']['infer_s']:.3f} s/vol"
        )
    return study
