"""Candidate signals for the in-domain rule, per volume (docs/reliability.md), with the Dice each
choice of normalization statistics gives:

- ``histogram``: the intensity-histogram distance to the source data (the rule the bundle uses);
- ``bn_shift``: mean normalized shift of the volume's settled BatchNorm means from the running ones;
- ``entropy``: mean prediction entropy over the body with the source's and with the volume's
  statistics (the "lower entropy wins" rule).

    python docs/benchmarks/domain_signals.py DATA_DIR BUNDLE_DIR docs/benchmarks/domain_signals.json
"""

from __future__ import annotations

import copy
import json
import sys

import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from grata_monai import defaults
from grata_monai.bench.common import load_bundle, prepare
from grata_monai.domain import histogram_distance
from grata_monai.norms import batch_norm_layers, settle_batch_norm_statistics
from grata_monai.sampling import windows


def main(data_dir: str, bundle_dir: str, out: str) -> None:
    device = torch.device("cpu")
    network, preprocessing, _ = load_bundle(bundle_dir, device)
    parser = ConfigParser()
    parser.read_config(f"{bundle_dir}/configs/inference.json")
    reference = parser["reference_histogram"]
    sliding = SlidingWindowInferer(defaults.ROI_SIZE, defaults.SW_BATCH_SIZE, defaults.OVERLAP)
    rows = {}
    for split in ("ct_val", "mr_test"):
        for vol in prepare(data_dir, split, preprocessing):
            image, label = vol["image"], vol["label"].long()
            own = copy.deepcopy(network)
            row = {"histogram": histogram_distance(image, reference)}
            with torch.no_grad():
                settle_batch_norm_statistics(own, windows(image[0], defaults.ROI_SIZE, device))
                shifts = [
                    (
                        (m.running_mean - s.running_mean).abs() / (s.running_var + s.eps).sqrt()
                    ).mean()
                    for m, s in zip(batch_norm_layers(own), batch_norm_layers(network))
                ]
                row["bn_shift"] = float(torch.stack(shifts).mean())
                body = image > defaults.BODY_FLOOR
                for name, net in (("source", network), ("volume", own)):
                    p = torch.softmax(sliding(image, net).float(), 1)
                    row[f"entropy_{name}"] = float(
                        (-(p * torch.log(p + 1e-6)).sum(1, keepdim=True))[body].mean()
                    )
                    dice = DiceMetric(
                        include_background=False, reduction="none", ignore_empty=True
                    )(one_hot(p.argmax(1, keepdim=True), p.shape[1]), one_hot(label, p.shape[1]))[0]
                    row[f"dice_{name}"] = float(dice.nanmean())
            rows[f"{split}/{vol['name']}"] = row
            print(vol["name"], {k: round(v, 4) for k, v in row.items()}, flush=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
