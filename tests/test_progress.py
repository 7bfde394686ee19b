"""Per-volume progress lines of a bundle run."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from monai.data import MetaTensor

from grata_monai.bundle.progress import ProgressHandler, duration


def test_duration():
    assert [duration(s) for s in (9.84, 125, 3720)] == ["9.8 s", "2 min 05 s", "1 h 02 min"]


def test_one_line_per_volume_with_index_name_seconds_and_eta(caplog):
    handler = ProgressHandler()
    state = SimpleNamespace(iteration=0, epoch_length=3, output=None)
    engine = SimpleNamespace(state=state)
    handler.started(engine)
    with caplog.at_level(logging.INFO, logger="grata_monai.bundle.progress"):
        for i, name in enumerate(["/d/a.nii.gz", "/d/series7/", "/d/c.nii"], start=1):
            state.iteration = i
            state.output = [{"pred": MetaTensor(torch.zeros(1), meta={"filename_or_obj": name})}]
            handler(engine)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split("  ")[0] for line in lines] == [
        "[1/3] a.nii.gz",
        "[2/3] series7",
        "[3/3] c.nii",
    ]
    assert "ETA" in lines[0] and "ETA" in lines[1] and "ETA" not in lines[2]
    assert handler.line(1, 4, "x", 10.0, 10.0) == "[1/4] x  10.0 s  ETA 30.0 s"
