"""Training throughput of bundle train configs, side by side in one process (one GPU).

For each config: build its trainer with `monai.bundle`, run ``warmup`` iterations, then time
``iterations`` more (device synchronized at both ends), and profile ``profile`` iterations with
`torch.profiler`. Writes JSON (iterations/s, crops/s, the device) and one profile table per config.

    python docs/benchmarks/train_throughput.py --configs before=old_train.json,after=bundle/configs/train.json \
        --dataset_dir .cache/abdomen --out docs/benchmarks/train_throughput.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fire
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _trainer(config: str, dataset_dir: str, ckpt_dir: str):
    parser = ConfigParser()
    parser.read_config(config)
    parser["dataset_dir"] = dataset_dir
    parser["ckpt_dir"] = ckpt_dir
    parser[
        "train#handlers"
    ] = []  # no validation, checkpoints or schedules: the training step alone
    parser.get_parsed_content("initialize")
    return parser.get_parsed_content("train#trainer")


def measure(
    config: str, dataset_dir: str, warmup: int = 20, iterations: int = 100, profile: int = 5
) -> dict:
    """Iterations/s of ``config``'s trainer after ``warmup`` iterations, and a profile table."""
    trainer = _trainer(config, dataset_dir, "/tmp/train_throughput")
    marks: dict = {}
    batch = {}

    def _tick(engine) -> None:
        it = engine.state.iteration
        b = engine.state.batch
        batch["size"] = len(b) if isinstance(b, list) else len(b["image"])
        if it == warmup:
            _sync()
            marks["start"] = time.perf_counter()
        if it == warmup + iterations:
            _sync()
            marks["end"] = time.perf_counter()
        if it == warmup + iterations + profile:
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _tick)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=warmup + iterations, warmup=0, active=profile),
    ) as prof:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: prof.step())
        trainer.run()
    seconds = marks["end"] - marks["start"]
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20)
    return {
        "iterations_per_s": iterations / seconds,
        "crops_per_iteration": batch.get("size"),
        "seconds": seconds,
        "iterations": iterations,
        "profile": table,
    }


def main(configs: str, dataset_dir: str, out: str, warmup: int = 20, iterations: int = 100) -> None:
    """Measure each ``name=path`` of ``configs`` (comma-separated) and write ``out`` (JSON) and profiles."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    results = {"device": device, "torch": torch.__version__, "configs": {}}
    for entry in configs.split(","):
        name, path = entry.split("=", 1)
        r = measure(path, dataset_dir, warmup, iterations)
        Path(out).with_name(f"profile_train_{name}.txt").write_text(r.pop("profile"))
        results["configs"][name] = {"config": path, **r}
        print(
            f"{name}: {r['iterations_per_s']:.2f} it/s ({r['crops_per_iteration']} crops/iteration)",
            flush=True,
        )
    names = list(results["configs"])
    if len(names) == 2:
        a, b = (results["configs"][n]["iterations_per_s"] for n in names)
        results[f"speedup_{names[1]}_over_{names[0]}"] = b / a
        print(f"speed-up {names[1]} / {names[0]}: {b / a:.1f}x", flush=True)
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    fire.Fire(main)
