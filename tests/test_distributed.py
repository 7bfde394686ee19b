"""Gradient averaging across ranks: two gloo processes on CPU stay in one shared adapted state."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from grata_monai import GraTaInferer
from grata_monai.alignment import grata_step
from grata_monai.distributed import average_across_ranks
from tests.conftest import BUNDLE_DIR, abdomen_dir


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1)
    ).train()


def _aux(network, x):
    return network(x).pow(2).mean()


def _pse(network, x):
    return torch.log_softmax(network(x), dim=1)[:, 0].mean().neg()


def _data(rank: int) -> torch.Tensor:
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(10 + rank))


def _params(net):
    return [net[1].weight, net[1].bias]


def _freeze_but_norm(net):
    for p in net.parameters():
        p.requires_grad_(False)
    for p in _params(net):
        p.requires_grad_(True)
    return _params(net)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = _net()
    params = _freeze_but_norm(net)
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(2):
        grata_step(net, params, opt, _data(rank), _aux, _pse, 1e-2, reduce=average_across_ranks)
    torch.save([p.detach() for p in params], f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_gloo_ranks_share_one_state(tmp_path):
    out = str(tmp_path / "params")
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    rank0, rank1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    for a, b in zip(rank0, rank1):
        assert torch.equal(a, b)

    # One process with the ranks' losses averaged follows the same path (gradients are linear).
    net = _net()
    params = _freeze_but_norm(net)
    opt = torch.optim.Adam(params, lr=1e-2)
    both = [_data(0), _data(1)]

    def mean_of(loss):
        return lambda network, _: sum(loss(network, x) for x in both) / 2

    for _ in range(2):
        grata_step(net, params, opt, both[0], mean_of(_aux), mean_of(_pse), 1e-2)
    for a, b in zip(rank0, params):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(rank0[0], _params(copy.deepcopy(_net()))[0])


def test_average_without_process_group_is_identity():
    grads = [torch.ones(2), torch.zeros(3)]
    assert all(torch.equal(a, b) for a, b in zip(average_across_ranks(grads), grads))


def _inferer_worker(rank: int, world: int, port: int, out: str) -> None:
    from tests.conftest import tiny_unet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    inferer = GraTaInferer(
        (16, 16, 16), steps=2, patches_per_step=2, lr0=1e-2, episodic=False, sync_ranks=True
    )
    volume = torch.rand(1, 1, 24, 24, 20, generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        inferer(volume, tiny_unet())
    torch.save([p.detach() for p in inferer._episode.params], f"{out}.{rank}")
    dist.destroy_process_group()


def test_continual_inferer_ranks_keep_one_state(tmp_path):
    out = str(tmp_path / "inferer")
    mp.spawn(_inferer_worker, args=(2, 29500 + (os.getpid() + 7) % 1000, out), nprocs=2, join=True)
    rank0, rank1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1))


def test_sync_ranks_needs_continual():
    with pytest.raises(ValueError, match="episodic=False"):
        GraTaInferer((16, 16, 16), sync_ranks=True)


def test_multi_gpu_evaluate_config_matches_one_process(tmp_path):
    """torchrun with 2 ranks (gloo on CPU) shards the volumes and writes the same metrics as one process."""
    src = abdomen_dir()
    data = tmp_path / "data"
    (data / "mr").mkdir(parents=True)
    items = []
    for case in ("mr_01", "mr_05"):
        for kind in ("image", "label"):
            shutil.copy(src / "mr" / f"{case}_{kind}.nii.gz", data / "mr")
        items.append({"image": f"mr/{case}_image.nii.gz", "label": f"mr/{case}_label.nii.gz"})
    (data / "datalist.json").write_text(json.dumps({"mr_test": items}))
    configs = BUNDLE_DIR / "configs"
    files = [str(configs / f) for f in ("inference.json", "evaluate.json")]
    quick = [
        "--bundle_root",
        str(BUNDLE_DIR),
        "--dataset_dir",
        str(data),
        "--inferer#steps",
        "1",
        "--inferer#patches_per_step",
        "1",
    ]
    one = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files)]
    two = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(29500 + (os.getpid() + 13) % 1000),
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(files + [str(configs / "multi_gpu_evaluate.json")]),
    ]
    for cmd, out in ((one, "one"), (two, "two")):
        r = subprocess.run(
            cmd + quick + ["--output_dir", str(tmp_path / out)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr[-3000:]
    rows = {
        out: (tmp_path / out / "mean_dice_raw.csv").read_text().splitlines()
        for out in ("one", "two")
    }
    assert len(rows["one"]) == 3 and sorted(rows["one"]) == sorted(rows["two"])
    assert (tmp_path / "one" / "metrics.csv").read_text() == (
        tmp_path / "two" / "metrics.csv"
    ).read_text()


def test_multi_gpu_train_config_runs_with_torchrun(tmp_path):
    """torchrun with 2 ranks (gloo on CPU), one iteration of tiny batches on the bundle's sample:
    the network is wrapped in DistributedDataParallel, each rank draws its own batches, and rank 0
    alone writes the checkpoint, which loads into the plain network."""
    sample = BUNDLE_DIR / "sample"
    item = {
        "image": str(sample / "mr_01_image.nii.gz"),
        "label": str(sample / "mr_01_label.nii.gz"),
    }
    (tmp_path / "datalist.json").write_text(
        json.dumps({"ct_train": [item], "ct_val": [item, item]})
    )
    configs = BUNDLE_DIR / "configs"
    files = [str(configs / f) for f in ("train.json", "multi_gpu_train.json")]
    tiny = [
        "--bundle_root",
        str(BUNDLE_DIR),
        "--dataset_dir",
        str(tmp_path),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--epoch_length",
        "1",
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
        "--batch_size",
        "2",
        "--roi_size",
        "[32,32,16]",
        "--train#dataset#num_workers",
        "0",
        "--validate#dataset#num_workers",
        "0",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(29500 + (os.getpid() + 29) % 1000),
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(files),
        *tiny,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser.get_parsed_content("network_def").load_state_dict(
        saved
    )  # no "module." prefix: DDP unwrapped
    assert json.loads((tmp_path / "models" / "training_log.json").read_text())
