"""GPUPatchSampler and TrainingLog: crops, centring on organs, label alignment, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch

from grata_monai.bundle.training import GPUPatchSampler, TrainingLog


def _dataset(n: int = 2):
    items = []
    for i in range(n):
        image = torch.rand(1, 40, 36, 20, generator=torch.Generator().manual_seed(i))
        label = torch.zeros(1, 40, 36, 20, dtype=torch.uint8)
        label[0, 5:10, 5:10, 5:10] = 1
        label[0, 30:34, 25:30, 12:16] = 2
        items.append({"image": image, "label": label})
    return items


def test_batches_have_the_roi_shape_and_epoch_length():
    s = GPUPatchSampler(
        _dataset(), (16, 16, 8), batch_size=4, crops_per_volume=2, epoch_length=3, device="cpu"
    )
    batches = list(s)
    assert len(batches) == len(s) == 3
    assert batches[0]["image"].shape == batches[0]["label"].shape == (4, 1, 16, 16, 8)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_aligned_crops_step_one_voxel_per_voxel(axis):
    """Without the affine, a crop of a ramp image is a ramp of slope 1 along the same axis."""
    data = _dataset(1)
    shape = data[0]["image"].shape[1:]
    ramp = torch.arange(shape[axis], dtype=torch.float32).view(
        [-1 if a == axis else 1 for a in range(3)]
    )
    data[0]["image"] = ramp.expand(shape)[None].clone()
    s = GPUPatchSampler(
        data, (8, 8, 4), batch_size=4, affine_prob=0.0, pos_fraction=1.0, device="cpu", seed=1
    )
    crops = s.batch()["image"][:, 0]
    steps = crops.diff(dim=1 + axis)
    assert torch.allclose(steps, torch.ones_like(steps), atol=1e-4)


def test_organ_centred_crops_contain_the_organ():
    s = GPUPatchSampler(_dataset(), (8, 8, 4), batch_size=8, pos_fraction=1.0, device="cpu", seed=0)
    b = s.batch()
    assert all(b["label"][i].sum() > 0 for i in range(8))
    centre = b["label"][:, 0, 3:5, 3:5, 1:3]
    assert (centre > 0).any(dim=(1, 2, 3)).all()  # the centre voxel was drawn from an organ


def test_affine_keeps_image_and_label_aligned():
    data = _dataset(1)
    data[0]["image"] = data[0]["label"].float()  # image == label: any misalignment shows
    s = GPUPatchSampler(
        data, (16, 16, 8), batch_size=4, affine_prob=1.0, pos_fraction=1.0, device="cpu"
    )
    b = s.batch()
    inside = b["label"] > 0
    assert (b["image"][inside] > 0.5).float().mean() > 0.9


def test_same_seed_same_batches():
    a = GPUPatchSampler(_dataset(), (8, 8, 4), batch_size=2, device="cpu", seed=5).batch()
    b = GPUPatchSampler(_dataset(), (8, 8, 4), batch_size=2, device="cpu", seed=5).batch()
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_bad_settings_and_inputs_raise():
    with pytest.raises(ValueError, match="multiple of crops_per_volume"):
        GPUPatchSampler(_dataset(), (8, 8, 4), batch_size=3, crops_per_volume=2, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        GPUPatchSampler([], (8, 8, 4), device="cpu").batch()
    bad = [{"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)}]
    with pytest.raises(ValueError, match="channel-first 3D"):
        GPUPatchSampler(bad, (8, 8, 4), device="cpu").batch()


def test_training_log_records_loss_and_validation(tmp_path):
    from ignite.engine import Engine

    trainer = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
    validator = Engine(lambda e, b: None)
    validator.state.metrics = {}

    @validator.on(__import__("ignite").engine.Events.COMPLETED)
    def _metric(engine):
        engine.state.metrics["val_mean_dice"] = 0.5

    log = TrainingLog(str(tmp_path / "log.json"), validator, interval=2)
    log.attach(trainer)
    trainer.add_event_handler(
        __import__("ignite").engine.Events.EPOCH_COMPLETED, lambda e: validator.run([0])
    )
    trainer.run([1, 2, 3, 4], max_epochs=1)
    record = json.loads((tmp_path / "log.json").read_text())
    assert record["iterations"] == 4
    assert [r[0] for r in record["loss"]] == [2, 4] and record["loss"][1][2] == 4.0
    assert record["val"][0][0] == 4 and record["val"][0][2] == 0.5
