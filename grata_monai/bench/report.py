"""Turn benchmark JSON files into ``docs/benchmarks.md`` and a figure."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from grata_monai import defaults

__all__ = [
    "ORGANS",
    "method_table",
    "worse_volumes",
    "volumes_table",
    "plot_gains",
    "rebase_links",
    "write_report",
]

# Typical adult organ volumes in mL (liver ~1-2.5 L; each kidney ~100-250 mL; spleen ~100-400 mL).
PLAUSIBLE_ML = ((1000, 2500), (100, 250), (100, 250), (100, 400))

ORGANS = tuple(
    o.replace("right ", "R ").replace("left ", "L ") for o in defaults.ORGANS
)  # short column names


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def method_table(results: dict) -> str:
    """Markdown table: Dice per organ and mean, time per volume and ratios to plain inference, peak
    GPU memory and how often the divergence guard fired."""
    methods = results["methods"]
    base = methods.get("source", {}).get("summary")
    head = (
        "| method | mean Dice | "
        + " | ".join(ORGANS)
        + " | adapt ms | infer ms | infer ×plain | end-to-end ×plain | peak GPU MiB | guard fired |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, entry in methods.items():
        s = entry["summary"]
        ratio = f"{s['infer_s'] / base['infer_s']:.2f}" if base else "—"
        e2e = f"{s['end_to_end_s'] / base['end_to_end_s']:.2f}" if base else "—"
        mem = f"{s['peak_gpu_mib']:.0f}" if s.get("peak_gpu_mib") else "—"
        organs = " | ".join(_pct(d) for d in s["dice_per_class"])
        lines.append(
            f"| {name} | **{_pct(s['dice_mean'])}** | {organs} | {1000 * s['adapt_s']:.0f} | "
            f"{1000 * s['infer_s']:.0f} | {ratio} | {e2e} | {mem} | {s.get('guard_fired', 0)} |"
        )
    return "\n".join(lines)


def _volume_means(entry: dict) -> dict[str, float]:
    out = {}
    for row in entry["volumes"]:
        valid = [d for d in row["dice"] if not math.isnan(d)]
        out[row["volume"]] = sum(valid) / len(valid) if valid else float("nan")
    return out


def worse_volumes(
    results: dict, reference: str = "source", tolerance: float = 0.01
) -> dict[str, list[str]]:
    """Per method, the volumes whose mean Dice is below ``reference``'s by more than ``tolerance``."""
    ref = _volume_means(results["methods"][reference])
    worse = {}
    for name, entry in results["methods"].items():
        means = _volume_means(entry)
        worse[name] = [
            f"{v} ({100 * (means[v] - ref[v]):+.1f})"
            for v in means
            if means[v] < ref[v] - tolerance
        ]
    return worse


def volumes_table(volumes: dict) -> str:
    """Markdown table of predicted organ volumes (mL) per input and method, flagged when implausible."""
    lines = [
        "| input | method | " + " | ".join(f"{o} mL" for o in ORGANS) + " | s |",
        "|" + "---|" * (len(ORGANS) + 3),
    ]
    for name, rows in volumes["volumes"].items():
        for method, row in rows.items():
            cells = [
                f"{ml:.0f}" + ("" if lo <= ml <= hi else " ⚠")
                for ml, (lo, hi) in zip(row["organ_ml"], PLAUSIBLE_ML)
            ]
            lines.append(
                f"| {name} | {method} | " + " | ".join(cells) + f" | {row['seconds']:.1f} |"
            )
    return "\n".join(lines)


def plot_gains(
    results: dict, path: str | Path, references: Sequence[str] = ("source", "norm_stats")
) -> None:
    """Strip plots of the per-volume mean-Dice gain of every method over each reference method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    references = [r for r in references if r in results["methods"]]
    fig, axes = plt.subplots(1, len(references), figsize=(7 * len(references), 4), squeeze=False)
    for ax, reference in zip(axes[0], references):
        ref = _volume_means(results["methods"][reference])
        names = [n for n in results["methods"] if n not in ("source", reference)]
        for i, name in enumerate(names):
            means = _volume_means(results["methods"][name])
            gains = [100 * (means[v] - ref[v]) for v in ref]
            ax.scatter([i] * len(gains), gains, alpha=0.6)
            ax.plot([i - 0.3, i + 0.3], [sum(gains) / len(gains)] * 2, color="k")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_ylabel(f"mean Dice gain over {reference} (points)")
        ax.set_title(f"{results['data']['key']}: per-volume gain over {reference}")
    fig.suptitle(results["device"], fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rebase_links(text: str, source_dir: str | Path, target_dir: str | Path) -> str:
    """Markdown written in ``source_dir`` with its relative links (``](file.md)``) rewritten for ``target_dir``;
    web links, anchors and absolute paths are kept."""

    def rebase(match: re.Match) -> str:
        link = match.group(1)
        if re.match(r"[a-z]+:|#|/", link):
            return match.group(0)
        return f"]({Path(os.path.relpath(Path(source_dir) / link, target_dir)).as_posix()})"

    return re.sub(r"\]\(([^)\s]+)\)", rebase, text)


def write_report(bench_dir: str | Path, md: str | Path) -> str:
    """Write ``md`` from the JSON files in ``bench_dir`` (results*.json, volumes*.json)
    and its notes.md, with a figure per results file."""
    bench_dir, md = Path(bench_dir), Path(md)
    parts = [
        "# Benchmarks\n",
        "_Generated by `grata-monai report` from the JSON files in `docs/benchmarks/`._\n",
    ]
    for path in sorted(bench_dir.glob("results*.json")):
        results = json.loads(path.read_text())
        figure = path.with_suffix(".png")
        own = [
            f"`{m}`: `{json.dumps(e['settings'])}`"
            for m, e in results["methods"].items()
            if e.get("settings")
        ]
        plot_gains(results, figure)
        parts += [
            f"## {results['data']['key']} — `{path.name}`\n",
            f"Device: **{results['device']}**; revision `{results['git_revision'][:10]}`; "
            f"{len(results['data']['volumes'])} volumes; command settings: `{json.dumps(results['settings'])}`.\n",
            method_table(results) + "\n",
            ("Per-method settings as recorded: " + "; ".join(own) + ".\n") if own else "",
            f"![per-volume gain]({os.path.relpath(figure, md.parent)})\n",
        ]
        for ref in ("source", "norm_stats"):
            if ref in results["methods"]:
                worse = worse_volumes(results, ref)
                listed = (
                    "; ".join(f"{m}: {', '.join(v)}" for m, v in worse.items() if v and m != ref)
                    or "none"
                )
                parts.append(f"Volumes more than 1 Dice point below **{ref}**: {listed}.\n")
    if (bench_dir / "study.md").is_file():
        parts.append(
            "The bundle default was chosen by the study of adaptation variants: [study.md](benchmarks/study.md).\n"
        )
    for path in sorted(bench_dir.glob("volumes*.json")):
        data = json.loads(path.read_text())
        parts += [
            f"## Unlabelled new center — `{path.name}`\n",
            f"Device: **{data['device']}**; input `{data['dataset_dir']}`. Predicted organ volumes; ⚠ marks a "
            "volume outside the typical adult range (liver 1–2.5 L, kidney 100–250 mL, spleen 100–400 mL).\n",
            volumes_table(data) + "\n",
        ]
    notes = bench_dir / "notes.md"
    if notes.is_file():
        parts.append(rebase_links(notes.read_text(), bench_dir, md.parent))
    text = "\n".join(parts)
    md.write_text(text)
    return text
