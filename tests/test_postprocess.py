"""grata_monai.postprocess: one component per organ, chosen by size and the organs' layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, KeepLargestConnectedComponent

from grata_monai.postprocess import (
    KeepOrganComponentsd,
    OrganLayout,
    components,
    fit_layout,
    keep_organ_components,
)

AFFINE = np.diag([2.0, 2.0, 4.0, 1.0])  # the bundle's 2 x 2 x 4 mm grid


def _organs(shape=(80, 60, 40)) -> np.ndarray:
    """Liver (1) on the right, spleen (4) 80 mm to its left, at the same height."""
    label = np.zeros(shape, np.uint8)
    label[10:25, 20:35, 15:25] = 1  # liver: 15 x 15 x 10 voxels
    label[50:58, 20:28, 15:21] = 4  # spleen: 8 x 8 x 6 voxels, centre 40 voxels (80 mm) along x
    return label


def _layout() -> OrganLayout:
    return fit_layout([(_organs(), AFFINE)] * 3, organs=[1, 4], min_std_mm=15.0)


def test_fit_layout_learns_centroid_offsets_in_millimetres():
    layout = _layout()
    assert layout.organs == (1, 4)
    assert layout.mean["1,4"] == pytest.approx(
        [(53.5 - 17) * 2.0, (23.5 - 27) * 2.0, (17.5 - 19.5) * 4.0], abs=0.01
    )
    assert layout.std["1,4"] == [15.0, 15.0, 15.0]  # three identical volumes: the floor
    assert OrganLayout.from_dict(layout.to_dict()) == layout


def test_keeps_the_organ_when_a_larger_false_blob_lies_elsewhere():
    label = _organs()
    label[60:78, 40:58, 30:40] = (
        4  # a false "spleen" larger than the spleen, 40 mm from where it belongs
    )
    t = torch.as_tensor(label)[None]
    largest, _ = keep_organ_components(t, AFFINE, layout=None)
    assert (
        largest[0].numpy()[50:58, 20:28, 15:21] == 4
    ).sum() == 0  # the plain largest component loses the spleen
    cleaned, summary = keep_organ_components(t, AFFINE, layout=_layout())
    out = cleaned[0].numpy()
    assert (out[50:58, 20:28, 15:21] == 4).all() and (out[60:78, 40:58, 30:40] == 0).all()
    assert summary["layout_changed"] == [4]
    assert (out == 1).sum() == (label == 1).sum()  # the liver untouched


def test_never_deletes_an_organ_and_removes_fragments():
    label = _organs()
    label[70, 5, 35] = 1  # specks far from the organs
    label[2, 55, 2] = 4
    cleaned, summary = keep_organ_components(torch.as_tensor(label)[None], AFFINE, layout=_layout())
    out = cleaned[0].numpy()
    assert set(np.unique(out)) == {0, 1, 4}
    assert out[70, 5, 35] == 0 and out[2, 55, 2] == 0
    assert summary["removed_fraction"] == pytest.approx(
        2 / ((label == 1).sum() + (label == 4).sum())
    )


def test_without_a_layout_it_is_monais_largest_component():
    rng = np.random.default_rng(0)
    label = _organs()
    label[rng.random(label.shape) > 0.997] = 1  # scattered specks of liver
    t = torch.as_tensor(label)[None]
    ours, _ = keep_organ_components(t, AFFINE, layout=None)
    monai = KeepLargestConnectedComponent(
        [1, 4], is_onehot=False, independent=True, connectivity=3
    )(t.clone())
    assert torch.equal(ours, monai)


def test_components_report_organ_size_and_world_centroid():
    _, comps = components(_organs(), AFFINE)
    by_organ = {c.organ: c for c in comps}
    assert by_organ[1].size == 15 * 15 * 10 and by_organ[4].size == 8 * 8 * 6
    assert by_organ[4].centroid_mm == pytest.approx([53.5 * 2, 23.5 * 2, 17.5 * 4])


def test_transform_reads_the_affine_of_a_metatensor_and_keeps_its_metadata():
    label = _organs()
    label[60:78, 40:58, 30:40] = 4
    pred = MetaTensor(torch.as_tensor(label)[None], affine=torch.as_tensor(AFFINE))
    out = Compose(
        [KeepOrganComponentsd("pred", layout=_layout().to_dict(), summary_key="postprocessing")]
    )({"pred": pred})
    assert isinstance(out["pred"], MetaTensor) and torch.equal(out["pred"].affine, pred.affine)
    assert (out["pred"][0, 50:58, 20:28, 15:21] == 4).all()
    assert out["postprocessing"]["layout_changed"] == [4]


def test_empty_label_map_is_returned_as_is():
    empty = torch.zeros(1, 8, 8, 4, dtype=torch.uint8)
    out, summary = keep_organ_components(empty, AFFINE, layout=_layout())
    assert torch.equal(out, empty) and summary["removed_fraction"] == 0.0


def test_bad_layout_is_one_clear_error():
    with pytest.raises(ValueError, match="organ layout needs"):
        KeepOrganComponentsd("pred", layout={"organs": [1]})
