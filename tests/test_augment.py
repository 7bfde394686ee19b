"""RandGIN / RandGINd: range, shape, type, device, probability and reproducibility."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.utils import set_determinism

from grata_monai.bundle.augment import RandGIN, RandGINd


def _image(shape=(1, 24, 20, 12)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g) * 0.2
    x[(slice(None),) + tuple(slice(2, s - 2) for s in shape[1:])] += 0.6
    return x


@pytest.mark.parametrize("spatial_mix_prob", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(1, 24, 20, 12), (1, 32, 28), (2, 16, 16, 8)])
def test_output_in_unit_range_same_shape(shape, spatial_mix_prob):
    t = RandGIN(prob=1.0, spatial_mix_prob=spatial_mix_prob).set_random_state(1)
    x = _image(shape)
    y = t(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) == pytest.approx(0.0, abs=1e-6) and float(y.max()) == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(y, x)


def test_alpha_zero_is_rescaled_identity():
    x = _image()
    y = RandGIN(prob=1.0, alpha_range=(0.0, 0.0), spatial_mix_prob=0.0)(x)
    ref = (x - x.min()) / (x.max() - x.min())
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_prob_zero_is_identity():
    x = _image()
    assert RandGIN(prob=0.0)(x) is x


def test_reproducible_with_seed_and_varies_between_calls():
    x = _image()
    a = RandGIN(prob=1.0).set_random_state(7)
    b = RandGIN(prob=1.0).set_random_state(7)
    ya1, ya2 = a(x), a(x)
    torch.testing.assert_close(ya1, b(x))
    assert not torch.allclose(ya1, ya2)


def test_metatensor_keeps_meta():
    x = MetaTensor(_image(), affine=torch.diag(torch.tensor([2.0, 2.0, 4.0, 1.0])))
    y = RandGIN(prob=1.0).set_random_state(0)(x)
    assert isinstance(y, MetaTensor)
    torch.testing.assert_close(y.affine, x.affine)


def test_dict_version_same_net_for_all_keys_and_leaves_others():
    x = _image()
    label = (x > 0.5).float()
    t = RandGINd(["a", "b"], prob=1.0).set_random_state(3)
    out = t({"a": x, "b": x.clone(), "label": label})
    torch.testing.assert_close(out["a"], out["b"])
    assert out["label"] is label


def test_in_compose_with_set_determinism():
    x = _image()
    outs = []
    for _ in range(2):
        set_determinism(seed=0)
        outs.append(Compose([RandGINd("image", prob=1.0)])({"image": x})["image"])
    set_determinism(None)
    torch.testing.assert_close(outs[0], outs[1])


def test_invalid_layers():
    with pytest.raises(ValueError, match="n_layers"):
        RandGIN(n_layers=(3, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = _image()
    y_cpu = RandGIN(prob=1.0).set_random_state(5)(x)
    y_gpu = RandGIN(prob=1.0).set_random_state(5)(x.cuda())
    assert y_gpu.device.type == "cuda"
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=1e-4, rtol=1e-4)
