"""Both directions of the shift: statistics rules and post-processing, from the candidate tables.

Reads the tables of :mod:`grata_monai.bench.candidates` (the shipped CT model on the dev MR volumes and
``ct_val``; MR-trained models on every CT volume) and reports, per model and set, mean Dice ×100 of
each statistics choice (source, half blend, own, the histogram rule, the bundle's entropy rule, the
per-volume best of source/half/own) with no post-processing, each organ's largest component, and the
layout-aware post-processing; the worst volume against the better of source and own; and what the
GraTa step adds (tables scored with and without it). The rule is chosen on the CT model's direction
(:func:`choose_rule`) and reported on the MR models' as held out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from grata_monai import defaults
from grata_monai.domain import volume_weight

__all__ = ["PREDICTIONS", "RULES", "rule_dice", "choose_rule", "summarize_set", "write_directions"]

PP = ("raw", "lcc", "layout")
THREE = ("0", "0.5", "1")  # source, half blend, own


def _mean(candidate: Mapping, pp: str) -> float:
    return 100 * float(np.nanmean(candidate["dice"][pp]))


def _nearest(weight: float) -> str:
    return min(("0", "0.25", "0.5", "0.75", "1"), key=lambda a: abs(float(a) - weight))


RULES: dict[str, Callable[[Mapping], str]] = {
    "source": lambda e: "0",
    "half": lambda e: "0.5",
    "own": lambda e: "1",
    "ensemble": lambda e: "ensemble",
    "histogram (auto)": lambda e: _nearest(
        volume_weight(e["signals"]["histogram_distance"], defaults.BLEND_RANGE)
    ),
    "entropy of 0/0.5/1 (bundle 0.3.8)": lambda e: min(
        THREE, key=lambda a: e["candidates"][a]["entropy_fg"]
    ),
    "entropy of 0/1 (bundle)": lambda e: min(
        ("0", "1"), key=lambda a: e["candidates"][a]["entropy_fg"]
    ),
    "entropy of 5 blends": lambda e: min(
        ("0", "0.25", "0.5", "0.75", "1"), key=lambda a: e["candidates"][a]["entropy_fg"]
    ),
    "least removed by post-processing": lambda e: min(
        THREE, key=lambda a: e["candidates"][a]["removed_fraction"]["layout"]
    ),
}
DEFAULT_RULE = "entropy of 0/1 (bundle)"
# predictions of the volume each rule needs: among rules of equal Dice the cheapest is chosen
PREDICTIONS = {
    "source": 1,
    "half": 1,
    "own": 1,
    "ensemble": 3,
    "histogram (auto)": 1,
    "entropy of 0/0.5/1 (bundle 0.3.8)": 3,
    "entropy of 0/1 (bundle)": 2,
    "entropy of 5 blends": 5,
    "least removed by post-processing": 3,
}


def rule_dice(entry: Mapping, rule: str, pp: str) -> float:
    """Mean Dice of ``rule``'s candidate for one volume's table entry (``grata`` or ``no_step``)."""
    return _mean(entry["candidates"][RULES[rule](entry)], pp)


def _best(entry: Mapping, pp: str) -> float:
    return max(_mean(entry["candidates"][a], pp) for a in THREE)


def summarize_set(volumes: Mapping[str, Mapping], episode: str = "grata") -> dict:
    """Per rule and post-processing the set's mean Dice, plus the per-volume best of source/half/own
    and, per rule (layout post-processing), the worst volume against the better of source and own."""
    entries = [v[episode] for v in volumes.values() if episode in v]
    out = {"volumes": len(entries), "mean": {}, "worst_vs_better_of_source_own": {}}
    for rule in RULES:
        out["mean"][rule] = {
            pp: float(np.mean([rule_dice(e, rule, pp) for e in entries])) for pp in PP
        }
        gaps = [
            (
                rule_dice(e, rule, "layout")
                - max(_mean(e["candidates"]["0"], "layout"), _mean(e["candidates"]["1"], "layout")),
                n,
            )
            for n, e in zip(volumes, entries)
        ]
        worst = min(gaps)
        out["worst_vs_better_of_source_own"][rule] = {
            "delta": worst[0],
            "volume": worst[1],
            "below_1": sum(g < -1.0 for g, _ in gaps),
        }
    out["mean"]["per-volume best of source/half/own"] = {
        pp: float(np.mean([_best(e, pp) for e in entries])) for pp in PP
    }
    return out


CALIBRATED = (
    "histogram (auto)",
)  # thresholds fitted to one source model's data: not a candidate for any model


def choose_rule(tuning: Mapping[str, dict], sets: tuple[str, ...]) -> str:
    """The rule with the best mean Dice (layout post-processing) over the tuning ``sets`` (the CT
    model's dev MR and ``ct_val``), among the rules with no threshold fitted to one source model;
    of rules with the same Dice, the one with the fewest predictions per volume."""
    pool = [r for r in RULES if r not in CALIBRATED]
    dice = {r: float(np.mean([tuning[s]["mean"][r]["layout"] for s in sets])) for r in pool}
    return min(pool, key=lambda r: (-dice[r], PREDICTIONS[r]))


def _load(files: list[str | Path]) -> dict:
    volumes: dict = {}
    meta: dict = {}
    for f in files:
        table = json.loads(Path(f).read_text())
        meta = {k: table[k] for k in ("device", "git_revision", "command")}
        volumes |= {name.removesuffix("_image"): v for name, v in table["volumes"].items()}
    return {"meta": meta, "volumes": volumes}


def write_directions(
    ct_model: str, mr_models: str | tuple, out_dir: str = "docs/benchmarks"
) -> dict:
    """Summarize the candidate tables into ``directions.json`` and ``directions.md`` in ``out_dir``.

    Args:
        ct_model: the shipped CT model's table (``mr_test`` and ``ct_val``).
        mr_models: comma-separated groups of tables, one group per MR-trained model, files within a
            group joined by ``+`` (e.g. ``a_e2.json+a_e3.json,b_e2.json+b_e3.json``).
        out_dir: where the two files go.
    """
    groups = mr_models.split(",") if isinstance(mr_models, str) else list(mr_models)
    ct = _load([ct_model])
    sets = {
        "CT model: dev MR (mr_test)": {
            n: v for n, v in ct["volumes"].items() if v["split"] == "mr_test"
        },
        "CT model: ct_val": {n: v for n, v in ct["volumes"].items() if v["split"] == "ct_val"},
    }
    metas = [ct["meta"]]
    for i, group in enumerate(groups):
        mr = _load(group.split("+"))
        metas.append(mr["meta"])
        sets[f"MR model {i}: ct_val"] = {
            n: v for n, v in mr["volumes"].items() if v["split"] == "ct_val"
        }
        sets[f"MR model {i}: 24 other CT"] = {
            n: v for n, v in mr["volumes"].items() if v["split"] == "ct_train"
        }
    summary = {name: summarize_set(vols) for name, vols in sets.items()}
    steps = {
        name: summarize_set(vols, "no_step")
        for name, vols in sets.items()
        if any("no_step" in v for v in vols.values())
    }
    chosen = choose_rule(summary, ("CT model: dev MR (mr_test)", "CT model: ct_val"))
    result = {
        "runs": metas,
        "chosen_on_ct_model": chosen,
        "sets": summary,
        "without_grata_step": steps,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "directions.json").write_text(json.dumps(result, indent=1))
    (out / "directions.md").write_text(_markdown(result))
    return result


def _markdown(result: dict) -> str:
    run = result["runs"][0]
    lines = [
        "# Statistics rule and post-processing, in both directions",
        "",
        "Generated by `grata-monai directions` from the candidate tables of `grata-monai candidates` "
        f"(device: {run['device']}, revision `{run['git_revision']}`). Mean Dice ×100 of the four organs on "
        "the preprocessed 2×2×4 mm grid of the **whole, uncropped** volumes, one GraTa step (the bundle's) "
        "before every choice. raw: argmax; lcc: each organ's largest component; layout: the bundle's "
        "post-processing (`grata_monai.postprocess`). histogram (auto): its blend weight rounded to the "
        "nearest blend in the table (0, 0.25, 0.5, 0.75, 1).",
        "",
        "Rule chosen on the CT model's direction only: the best mean of its two sets (layout post-processing) "
        "among the rules with no threshold fitted to one source model (the histogram rule's blend range was "
        "fitted to the CT model's data), and of rules with the same Dice the one with the fewest predictions "
        f"per volume: **{result['chosen_on_ct_model']}**. The MR-model rows are held out.",
        "",
    ]
    for name, s in result["sets"].items():
        lines += [
            f"## {name} ({s['volumes']} volumes)",
            "",
            "| statistics | raw | lcc | layout | worst vs better of source/own | volumes below −1 |",
            "|---|---|---|---|---|---|",
        ]
        for rule, m in s["mean"].items():
            w = s["worst_vs_better_of_source_own"].get(rule)
            worst = f"{w['delta']:+.1f} ({w['volume']})" if w else ""
            below = str(w["below_1"]) if w else ""
            lines.append(
                f"| {rule} | {m['raw']:.1f} | {m['lcc']:.1f} | {m['layout']:.1f} | {worst} | {below} |"
            )
        lines.append("")
    lines += [
        "## What the GraTa step adds",
        "",
        "Same sets scored without the step (layout post-processing): Δ = with − without.",
        "",
        "| set | source | own | bundle rule |",
        "|---|---|---|---|",
    ]
    for name, s in result["without_grata_step"].items():
        w = result["sets"][name]["mean"]
        lines.append(
            f"| {name} | {w['source']['layout'] - s['mean']['source']['layout']:+.2f} | "
            f"{w['own']['layout'] - s['mean']['own']['layout']:+.2f} | "
            f"{w[DEFAULT_RULE]['layout'] - s['mean'][DEFAULT_RULE]['layout']:+.2f} |"
        )
    return "\n".join(lines) + "\n"
