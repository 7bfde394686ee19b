"""grata_monai.bundle.background: the bundle run's SaveImaged in background threads."""

from __future__ import annotations

import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.transforms import Compose, Lambdad, SaveImaged

from grata_monai.bundle.background import BackgroundWrites


def _item(index: int) -> dict:
    label = torch.zeros(1, 8, 8, 4)
    label[0, index % 8] = index + 1
    meta = {
        "filename_or_obj": f"vol_{index}.nii.gz",
        "affine": torch.diag(torch.tensor([2.0, 2, 4, 1])),
    }
    return {"pred": MetaTensor(label, meta=meta)}


def _postprocessing(out) -> Compose:
    return Compose(
        [
            Lambdad("pred", lambda x: x * 1),  # inline: not a SaveImaged
            SaveImaged("pred", output_dir=str(out), output_postfix="seg", separate_folder=False,
                       output_dtype=np.uint8, resample=False, print_log=False),
        ]
    )  # fmt: skip


@pytest.mark.parametrize("threads", [0, 2])
def test_writes_what_the_plain_postprocessing_writes(tmp_path, threads):
    writes = BackgroundWrites(_postprocessing(tmp_path / "bg"), threads)
    plain = _postprocessing(tmp_path / "plain")
    for i in range(6):
        returned = writes(_item(i))
        assert torch.equal(returned["pred"], _item(i)["pred"])  # the item goes on at once
        plain(_item(i))
    writes.wait()
    for i in range(6):
        a = nib.load(tmp_path / "bg" / f"vol_{i}_seg.nii.gz")
        b = nib.load(tmp_path / "plain" / f"vol_{i}_seg.nii.gz")
        assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)
    assert not writes.pending


class _SlowSave(SaveImaged):
    """A SaveImaged that takes a while and counts the writes in flight."""

    lock = threading.Lock()
    active = peak = 0

    def __call__(self, data):
        with self.lock:
            _SlowSave.active += 1
            _SlowSave.peak = max(_SlowSave.peak, _SlowSave.active)
        time.sleep(0.05)
        with self.lock:
            _SlowSave.active -= 1
        return super().__call__(data)


def test_waits_for_the_oldest_write_beyond_twice_the_threads(tmp_path):
    save = _SlowSave("pred", output_dir=str(tmp_path), separate_folder=False, print_log=False)
    writes = BackgroundWrites(Compose([save]), threads=2)
    for i in range(10):
        writes(_item(i))
        assert len(writes.pending) <= 2 * 2 + 1
    writes.wait()
    assert _SlowSave.peak == 2 and len(list(tmp_path.glob("*.nii.gz"))) == 10


class _FailingSave(SaveImaged):
    def __call__(self, data):
        raise OSError("disk full")


def test_a_failed_write_is_raised_not_lost(tmp_path):
    writes = BackgroundWrites(Compose([_FailingSave("pred", output_dir=str(tmp_path))]), 1)
    writes(_item(0))
    with pytest.raises(OSError, match="disk full"):
        writes.wait()


def test_the_run_waits_for_its_last_writes(tmp_path):
    """As an evaluator handler: when the run completes, every file is on disk."""
    save = _SlowSave("pred", output_dir=str(tmp_path), separate_folder=False, print_log=False)
    writes = BackgroundWrites(Compose([save]), threads=2)
    engine = Engine(lambda engine, item: writes(item))
    writes.attach(engine)
    engine.run([_item(i) for i in range(5)])
    assert len(list(tmp_path.glob("*.nii.gz"))) == 5 and not writes.pending


@pytest.mark.parametrize("threads", [-1, True, "2", 1.5])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(ValueError, match="write_threads"):
        BackgroundWrites(Compose([]), threads)


def test_a_write_waits_for_a_capture_under_way(tmp_path, monkeypatch):
    """A background write copies its label map off the device in a running turn: not while the
    inferer captures CUDA graphs in another thread (grata_monai.turns)."""
    from grata_monai import turns

    fresh = turns.Turns()
    monkeypatch.setattr("grata_monai.bundle.background.TURNS", fresh)
    writes = BackgroundWrites(_postprocessing(tmp_path), 1)
    capturing, done = threading.Event(), threading.Event()

    def capture() -> None:
        with fresh.alone():
            capturing.set()
            done.wait(5)

    holder = threading.Thread(target=capture, daemon=True)
    holder.start()
    assert capturing.wait(5)
    writes(_item(0))
    time.sleep(0.3)
    assert not (tmp_path / "vol_0_seg.nii.gz").exists()
    done.set()
    writes.wait()
    holder.join(5)
    assert (tmp_path / "vol_0_seg.nii.gz").exists()
