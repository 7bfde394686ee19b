"""Source-only Dice of a trained checkpoint, with CT running statistics and with per-volume ones.

Usage (from the repository root; dataset_dir is a folder with datalist.json, e.g. the cache
of ``grata-monai cache``):

    python bundle/scripts/evaluate_source.py --dataset_dir .cache/abdomen \
        --ckpt bundle/models/model.pt --splits ct_val,mr_test --out eval/source.json

Two rows per split:
- ``running``: the network in eval mode, with the batch-norm running statistics from CT training.
- ``per_volume``: batch-norm statistics re-estimated on each test volume, no gradient: running
  statistics reset, ``momentum=None`` (cumulative average), one pass in train mode over all
  sliding windows of the volume, then inference in eval mode with those statistics.

Dice per organ (background excluded) in the preprocessed space (RAS, 2x2x4 mm, body crop),
averaged over volumes. Writes a JSON file and prints a markdown table.
"""

from __future__ import annotations

import copy
import json
import os
import time

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.inferers import SlidingWindowInferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

ORGANS = ["liver", "right kidney", "left kidney", "spleen"]


def _settle_per_volume_stats(net: torch.nn.Module, image: torch.Tensor, inferer: SlidingWindowInferer) -> None:
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        inferer(image, net)
    net.eval()


def evaluate(
    dataset_dir: str,
    ckpt: str,
    splits: str | tuple = "ct_val,mr_test",
    out: str = "eval/source.json",
    config_file: str = os.path.join(os.path.dirname(__file__), "..", "configs", "train.json"),
    sw_batch_size: int = 4,
    amp: bool = True,
    limit: int | None = None,
) -> dict:
    """Evaluate ``ckpt`` on datalist ``splits`` of ``dataset_dir``; see the module docstring."""
    parser = ConfigParser()
    parser.read_config(config_file)
    parser["dataset_dir"] = dataset_dir
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net0 = parser.get_parsed_content("network_def").to(device)
    state = torch.load(ckpt, map_location=device, weights_only=True)
    net0.load_state_dict(state.get("model", state))
    net0.eval()
    transform = parser.get_parsed_content("validate#preprocessing")
    inferer = SlidingWindowInferer(parser["roi_size"], sw_batch_size=sw_batch_size, overlap=0.25)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    results: dict = {"ckpt": ckpt, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    splits = splits.split(",") if isinstance(splits, str) else list(splits)
    for split in splits:
        items = load_decathlon_datalist(os.path.join(dataset_dir, "datalist.json"), True, split, dataset_dir)[:limit]
        loader = DataLoader(Dataset(items, transform), batch_size=1, num_workers=4)
        metrics = {m: DiceMetric(include_background=False, reduction="mean_batch") for m in ("running", "per_volume")}
        per_case = {m: [] for m in metrics}
        t0 = time.time()
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            y = one_hot(label.long(), 5)
            for mode in metrics:
                net = net0 if mode == "running" else copy.deepcopy(net0)
                with autocast:
                    if mode == "per_volume":
                        _settle_per_volume_stats(net, image, inferer)
                    with torch.no_grad():
                        logits = inferer(image, net)
                pred = one_hot(logits.float().argmax(1, keepdim=True), 5)
                d = DiceMetric(include_background=False, reduction="none")(pred, y)
                metrics[mode](pred, y)
                per_case[mode].append([round(float(v) * 100, 2) for v in d[0]])
        results[split] = {}
        for mode, metric in metrics.items():
            organ = [float(v) * 100 for v in metric.aggregate()]
            results[split][mode] = {
                "mean": round(sum(organ) / len(organ), 2),
                **{o: round(v, 2) for o, v in zip(ORGANS, organ)},
                "per_case": per_case[mode],
            }
        results[split]["seconds"] = round(time.time() - t0, 1)
        print(f"\n{split} ({len(items)} volumes, {results[split]['seconds']} s)")
        print("| statistics | mean | " + " | ".join(ORGANS) + " |")
        for mode in metrics:
            r = results[split][mode]
            print(f"| {mode} | {r['mean']:.1f} | " + " | ".join(f"{r[o]:.1f}" for o in ORGANS) + " |", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    import functools

    import fire

    @functools.wraps(evaluate)
    def _main(*args, **kwargs) -> None:  # results go to the JSON file; don't let fire print them
        evaluate(*args, **kwargs)

    fire.Fire(_main)
