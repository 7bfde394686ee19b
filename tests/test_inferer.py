"""GraTaInferer: host network untouched, determinism, sw_batch_size invariance, hosts' calling conventions."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.inferers import SlidingWindowInferer

from grata_monai import GraTaInferer, defaults, reports_of
from grata_monai.norms import find_norm_layers
from tests.conftest import BUNDLE_DIR, abdomen_dir, tiny_unet

ROI = (16, 16, 16)


def grata(**kwargs) -> GraTaInferer:
    settings = {
        "sw_batch_size": 2,
        "steps": 2,
        "patches_per_step": 2,
        "lr0": 1e-2,
        "seed": 0,
    } | kwargs
    return GraTaInferer(ROI, **settings)


def snapshot(net):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modes = {n: m.training for n, m in net.named_modules()}
    grads = {n: p.requires_grad for n, p in net.named_parameters()}
    return state, modes, grads


def assert_same(net, snap):
    state, modes, grads = snap
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert {n: p.requires_grad for n, p in net.named_parameters()} == grads


def test_output_shape_like_sliding_window(unet, volume):
    with torch.no_grad():
        out = grata()(volume, unet)
        ref = SlidingWindowInferer(ROI, 2)(volume, unet)
    assert out.shape == ref.shape == (1, 3, *volume.shape[2:])
    assert torch.isfinite(out).all()


def test_host_network_untouched_and_episodic_is_deterministic(unet, volume):
    snap = snapshot(unet)
    inferer = grata()
    other = torch.rand_like(volume)
    with torch.no_grad():
        first = inferer(volume, unet)
        inferer(other, unet)  # a different patient in between
        again = inferer(volume, unet)
    assert torch.equal(first, again)
    assert_same(unet, snap)


def test_adaptation_changes_the_output(unet, volume):
    with torch.no_grad():
        adapted = grata(steps=3, lr0=0.1)(volume, unet)
        stats_only = grata(steps=0)(volume, unet)
    assert not torch.allclose(adapted, stats_only)


def test_sw_batch_size_does_not_change_the_output(unet, volume):
    with torch.no_grad():
        one = grata(sw_batch_size=1)(volume, unet)
        four = grata(sw_batch_size=4)(volume, unet)
    torch.testing.assert_close(one, four, rtol=1e-4, atol=1e-4)


def test_runs_under_no_grad_and_refuses_inference_mode(unet, volume):
    with torch.no_grad():
        grata()(volume, unet)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no_grad"):
        grata()(volume, unet)


def test_torchscript_network_adapts(unet, volume):
    scripted = torch.jit.script(unet)
    snap = snapshot(scripted)
    inferer = grata(episodic=False, steps=2, lr0=0.1)
    with torch.no_grad():
        out_scripted = inferer(volume, scripted)
    adapted = inferer._episode.network
    moved = [
        not torch.equal(m.weight, dict(scripted.named_modules())[n].weight)
        for n, m in find_norm_layers(adapted)
    ]
    assert any(moved), "no norm weight of the TorchScript network was adapted"
    assert_same(scripted, snap)
    with torch.no_grad():
        out_eager = grata(episodic=False, steps=2, lr0=0.1)(volume, unet)
    torch.testing.assert_close(out_scripted, out_eager, rtol=1e-4, atol=1e-4)


def test_accepts_predictor_wrapper_and_keyword_call(unet, volume):
    class TorchScriptModel:  # the shape of MONAI Deploy's wrapper
        predictor = unet

    with torch.no_grad():
        out = grata()(inputs=volume, network=TorchScriptModel())
        ref = grata()(volume, unet)
    assert torch.equal(out, ref)


def test_continual_keeps_adapting_until_reset(unet, volume):
    inferer = grata(episodic=False)
    with torch.no_grad():
        first = inferer(volume, unet)
        second = inferer(volume, unet)
        inferer.reset()
        after_reset = inferer(volume, unet)
    assert not torch.equal(first, second)
    assert torch.equal(first, after_reset)


def test_batch_of_volumes_is_adapted_per_volume(unet, volume):
    other = torch.rand_like(volume)
    inferer = grata()
    with torch.no_grad():
        both = inferer(torch.cat([volume, other]), unet)
        alone = inferer(other, unet)
    assert both.shape[0] == 2
    assert torch.equal(both[1:], alone)


def test_threads_share_one_network(unet, volume):
    volumes = [volume * s for s in (1.0, 0.5, 2.0, 0.8)]
    inferer = grata()
    with torch.no_grad():
        serial = [inferer(v, unet) for v in volumes]
    snap = snapshot(unet)
    results = [None] * len(volumes)

    def work(i):
        with torch.no_grad():
            results[i] = inferer(volumes[i], unet)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(volumes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        assert torch.equal(got, want)
    assert_same(unet, snap)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(1, 40, 36, 20), "spatial dims"),
        (torch.full((1, 1, 20, 20, 20), float("nan")), "NaN or Inf"),
        (torch.rand(1, 1, 20, 20, 20).index_fill(3, torch.tensor([3]), float("inf")), "NaN or Inf"),
        (torch.rand(1, 1, 0, 20, 20), "empty"),
    ],
)
def test_bad_inputs_are_clear_errors(unet, bad, message):
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        grata()(bad, unet)


def test_no_affine_network_is_an_error(volume):
    with torch.no_grad(), pytest.raises(ValueError, match="nothing to adapt"):
        grata()(volume, tiny_unet("instance"))


def test_bad_settings():
    with pytest.raises(ValueError, match="optimizer"):
        GraTaInferer(ROI, optimizer="lbfgs")
    with pytest.raises(ValueError, match="norm_stats"):
        GraTaInferer(ROI, norm_stats="batch")
    with pytest.raises(ValueError, match="weak"):
        GraTaInferer(ROI, weak_transforms=("flip9",))
    with pytest.raises(ValueError, match="settle_windows"):
        GraTaInferer(ROI, settle_windows=0)


def test_settle_windows_limits_the_statistics(unet, volume):
    """Fewer settling windows: other statistics (a different output), recorded in the report."""
    with torch.no_grad():
        full = grata(steps=0)(volume, unet)
        two = grata(steps=0, settle_windows=2)(volume, unet)
        many = grata(steps=0, settle_windows=1000)(volume, unet)
    assert not torch.allclose(full, two)
    torch.testing.assert_close(full, many)
    assert reports_of(two)[0]["settings"]["settle_windows"] == 2


def test_patch_size_sets_the_adaptation_patches(unet, volume, monkeypatch):
    import grata_monai.adaptive as module

    sizes = []
    real = module.body_patches

    def spy(volume, size, *args, **kwargs):
        sizes.append(tuple(size))
        return real(volume, size, *args, **kwargs)

    monkeypatch.setattr(module, "body_patches", spy)
    with torch.no_grad():
        out = grata(patch_size=(8, 8, 8))(volume, unet)
        grata()(volume, unet)
    assert sizes == [(8, 8, 8), ROI] and torch.isfinite(out).all()
    assert reports_of(out)[0]["settings"]["patch_size"] == [8, 8, 8]


def test_volume_smaller_than_roi(unet):
    small = torch.rand(1, 1, 10, 12, 8)
    with torch.no_grad():
        out = grata()(small, unet)
    assert out.shape == (1, 3, 10, 12, 8) and torch.isfinite(out).all()


def test_report_records_each_step(unet, volume):
    with torch.no_grad():
        out = grata(steps=3)(torch.cat([volume, volume.flip(2)]), unet)
    reports = reports_of(out)
    assert len(reports) == 2 and reports[0]["steps"] != reports[1]["steps"]  # one per volume
    for report in reports:
        assert len(report["steps"]) == 3
        for step in report["steps"]:
            assert -1.0 <= step["cosine"] <= 1.0
            assert step["lr"] == pytest.approx(1e-2 * (step["cosine"] + 1) ** 2 / 4)
        assert 0 < report["adapt_seconds"] <= report["total_seconds"]


def test_defaults_are_the_bundles():
    inferer = GraTaInferer()
    assert (
        inferer.roi_size == defaults.ROI_SIZE
        and inferer.sliding.sw_batch_size == defaults.SW_BATCH_SIZE
    )
    assert (inferer.steps, inferer.patches_per_step, inferer.lr0) == (
        defaults.STEPS,
        defaults.PATCHES_PER_STEP,
        defaults.LR0,
    )
    assert (
        inferer.weak_transforms == defaults.WEAK_TRANSFORMS
        and "flip0" not in inferer.weak_transforms
    )
    assert (inferer.batch_views, inferer.episodic, inferer.amp, inferer.seed) == (
        defaults.BATCH_VIEWS,
        defaults.EPISODIC,
        defaults.AMP,
        defaults.SEED,
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(unet, volume):
    with torch.no_grad():
        cpu = grata(amp=False)(volume, unet)
        gpu = grata(amp=False)(volume.cuda(), unet.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-2, atol=1e-2)


def test_real_mr_volume_smoke():
    """One real CHAOS T2 MR volume through the bundle's network, weights and labelled preprocessing:
    every organ is found, and the mean Dice clears a floor well above the source model's (about 0.1)."""
    from monai.bundle import ConfigParser
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    data = abdomen_dir()
    if not (BUNDLE_DIR / "models" / "model.pt").is_file():
        pytest.skip(f"bundle weights not found at {BUNDLE_DIR}/models/model.pt")
    parser = ConfigParser()
    parser.read_config(
        [str(BUNDLE_DIR / "configs" / f) for f in ("inference.json", "evaluate.json")]
    )
    parser["bundle_root"] = str(BUNDLE_DIR)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(
        torch.load(BUNDLE_DIR / "models" / "model.pt", map_location="cpu", weights_only=True)
    )
    item = parser.get_parsed_content("preprocessing")(
        {
            "image": str(data / "mr" / "mr_01_image.nii.gz"),
            "label": str(data / "mr" / "mr_01_label.nii.gz"),
        }
    )
    x, label = item["image"].as_tensor()[None], item["label"].as_tensor()[None].long()
    with torch.no_grad():
        out = GraTaInferer(steps=1, patches_per_step=2)(x, net.eval())
    assert out.shape == (1, 5, *x.shape[2:]) and torch.isfinite(out).all()
    pred = out.argmax(1, keepdim=True)
    assert set(pred.unique().tolist()) == set(range(5)), "every organ is predicted"
    dice = DiceMetric(include_background=False, reduction="none")(
        one_hot(pred, 5), one_hot(label, 5)
    )
    assert float(dice.nanmean()) > 0.4


@pytest.mark.parametrize("scripted", [False, True])
def test_wrong_channel_count_is_a_clear_error(unet, scripted):
    net = torch.jit.script(unet) if scripted else unet
    with torch.no_grad(), pytest.raises(ValueError, match="2 channel"):
        grata()(torch.rand(1, 2, 20, 20, 20), net)


@pytest.mark.parametrize("fill", [0.0, 7.0])
def test_constant_volume_gives_a_finite_result(unet, fill):
    with torch.no_grad():
        out = grata()(torch.full((1, 1, 20, 20, 20), fill), unet)
    assert torch.isfinite(out).all()


def test_integer_volume_is_cast(unet, volume):
    as_int = (volume * 1000).to(torch.int16)
    with torch.no_grad():
        out = grata()(as_int, unet)
        ref = grata()(as_int.float(), unet)
    assert out.dtype == torch.float32 and torch.equal(out, ref)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    shape=st.tuples(st.integers(4, 36), st.integers(4, 36), st.integers(4, 24)),
    scale=st.floats(1e-3, 1e4),
    offset=st.floats(-1e3, 1e3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int16, torch.uint8]),
)
def test_property_any_shape_range_dtype_gives_finite_logits(shape, scale, offset, dtype):
    net = tiny_unet()
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0)) * scale + offset
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        x = x.clamp(info.min, info.max)
    x = x.to(dtype)
    with torch.no_grad():
        out = grata(steps=1, patches_per_step=1)(x, net)
    assert out.shape == (1, 3, *shape) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_continual_adaptation_uses_test_statistics_on_every_volume(unet, volume):
    """After a volume's inference (BatchNorm in eval mode), the next volume adapts in test-statistics mode."""
    seen = []

    class Spy(GraTaInferer):
        def adapt_step(self, episode, x):
            seen.append(all(m.training for _, m in find_norm_layers(episode.network)))
            return super().adapt_step(episode, x)

    inferer = Spy(ROI, steps=1, patches_per_step=2, episodic=False)
    with torch.no_grad():
        inferer(volume, unet)
        inferer(volume, unet)
    assert seen == [True, True]


def test_signature_is_explicit_and_shows_every_setting():
    """help() and config checkers see every setting with its default: no **kwargs, the presets' keys included."""
    import inspect
    import pydoc

    from grata_monai.adaptive import AdaptiveInferer

    params = inspect.signature(GraTaInferer).parameters
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    sliding = set(inspect.signature(SlidingWindowInferer).parameters) - {"args", "kwargs"}
    assert sliding <= set(params) and set(inspect.signature(AdaptiveInferer).parameters) <= set(
        params
    )
    assert all(key in params for preset in defaults.PRESETS.values() for key in preset)
    text = pydoc.render_doc(GraTaInferer, renderer=pydoc.plaintext)
    assert (
        "steps: 'int' = 1," in text
        and f"weak_transforms: 'Sequence[str]' = {defaults.WEAK_TRANSFORMS}" in text
    )
    assert "with_coord: 'bool' = False" in text and "preset: 'str | None' = None" in text


def test_sliding_window_arguments_pass_through(unet, volume):
    inferer = grata(
        mode="gaussian", sigma_scale=0.2, padding_mode="replicate", cval=1.0, buffer_steps=2
    )
    s = inferer.sliding
    assert (s.mode, s.sigma_scale, s.padding_mode, s.cval, s.buffer_steps) == (
        "gaussian",
        0.2,
        "replicate",
        1.0,
        2,
    )
    with pytest.raises(TypeError, match="stpes"):
        GraTaInferer(ROI, stpes=2)


def test_guard_thresholds_and_abstract_step():
    from grata_monai.adaptive import AdaptiveInferer
    from grata_monai.guard import DivergenceGuard

    assert (
        GraTaInferer(ROI, guard=DivergenceGuard(entropy_tolerance=0.3)).guard.entropy_tolerance
        == 0.3
    )
    assert (
        GraTaInferer(ROI).guard == DivergenceGuard()
        and GraTaInferer(ROI, guard=False).guard is None
    )
    with pytest.raises(ValueError, match="guard must be"):
        GraTaInferer(ROI, guard="yes")
    # "false" from a command line is truthy
    for flag in ("episodic", "amp", "sigmoid", "cuda_graphs", "channels_last", "pair_patches"):
        with pytest.raises(ValueError, match=f"{flag} must be True or False, got 'false'"):
            GraTaInferer(ROI, **{flag: "false"})
    with pytest.raises(TypeError, match="adapt_step"):
        AdaptiveInferer(ROI)


def test_entropy_rule_keeps_the_least_uncertain_blend_and_reports_every_candidate(unet, volume):
    """norm_stats="entropy": one prediction per statistics weight; the kept logits are those of the weight
    with the lowest foreground entropy, identical to a plain run with that weight."""
    from grata_monai.audit import reports_of
    from grata_monai.domain import foreground_entropy

    chosen = GraTaInferer(ROI, steps=0, norm_stats="entropy", statistics_candidates=(0.0, 0.5, 1.0))
    with torch.no_grad():
        logits = chosen(volume, unet)
    report = reports_of(logits)[0]
    entropies = report["statistics_entropy"]
    assert set(entropies) == {"0", "0.5", "1"}
    best = min(entropies, key=entropies.get)
    assert report["volume_statistics_weight"] == float(best)
    fixed = {"0": dict(norm_stats="source"), "1": dict(norm_stats="volume")}
    assert (
        best in fixed
    )  # on this volume the tiny network is most certain with one of the plain choices
    with torch.no_grad():
        plain = GraTaInferer(ROI, steps=0, **fixed[best])(volume, unet)
    assert torch.allclose(torch.as_tensor(logits), torch.as_tensor(plain), atol=1e-5)
    assert foreground_entropy(plain) == pytest.approx(entropies[best], rel=1e-4)


def test_entropy_rule_refuses_weights_outside_zero_one():
    with pytest.raises(ValueError, match="statistics_candidates"):
        GraTaInferer(ROI, norm_stats="entropy", statistics_candidates=(0.0, 1.5))


def test_entropy_rule_batched_on_eager_networks_equals_the_scripted_loop(unet, volume, monkeypatch):
    """Eager networks settle and predict the candidates in batched passes (on CUDA; here forced on the
    CPU), TorchScript ones in loops: the same logits, entropies and choice."""
    import grata_monai.adaptive as module
    from grata_monai.audit import reports_of

    monkeypatch.setattr(module, "_stacks", lambda network, device: module.can_stack(network))

    rule = GraTaInferer(ROI, steps=0, norm_stats="entropy", sw_batch_size=2)
    with torch.no_grad():
        batched = rule(volume, unet)
        looped = rule(volume, torch.jit.script(unet))
    torch.testing.assert_close(
        torch.as_tensor(batched), torch.as_tensor(looped), rtol=1e-4, atol=1e-4
    )
    a, b = (reports_of(x)[0] for x in (batched, looped))
    assert a["volume_statistics_weight"] == b["volume_statistics_weight"]
    assert a["statistics_entropy"] == pytest.approx(b["statistics_entropy"], rel=1e-4)


@pytest.mark.parametrize("stacked", [False, True])
def test_entropy_rule_on_settle_windows_compares_there_and_predicts_once(
    unet, volume, monkeypatch, stacked
):
    """With settle_windows the candidates are compared on those windows; the volume is then predicted
    once, with the kept weight's statistics (also after the candidates' batched pass)."""
    import grata_monai.adaptive as module
    from grata_monai.audit import reports_of

    monkeypatch.setattr(module, "_stacks", lambda network, device: stacked)
    rule = GraTaInferer(ROI, steps=0, norm_stats="entropy", settle_windows=2)
    with torch.no_grad():
        logits = rule(volume, unet)
        whole = GraTaInferer(ROI, steps=0, norm_stats="entropy")(volume, unet)
    report = reports_of(logits)[0]
    assert report["statistics_entropy"] != reports_of(whole)[0]["statistics_entropy"]
    weight = report["volume_statistics_weight"]
    fixed = {0.0: dict(norm_stats="source"), 1.0: dict(norm_stats="volume", settle_windows=2)}
    with torch.no_grad():
        plain = GraTaInferer(ROI, steps=0, **fixed[weight])(volume, unet)
    torch.testing.assert_close(
        torch.as_tensor(logits), torch.as_tensor(plain), rtol=1e-4, atol=1e-5
    )


def test_working_copies_are_reused_once_released_and_reset_to_the_source(unet, volume):
    """A released working copy serves the next volume, reset to the source's weights and statistics;
    copies in use (calls running at once) are never shared."""
    inferer = grata(steps=1)
    cpu = torch.device("cpu")
    first = inferer.configure(unet, cpu)
    with torch.no_grad():
        first.params[0].add_(1.0)
        state = first.network.state_dict()
        state[next(k for k in state if "running_mean" in k)].add_(1.0)
    busy = inferer.configure(unet, cpu)
    assert busy.network is not first.network
    inferer.release(first)
    again = inferer.configure(unet, cpu)
    assert again.network is first.network
    for name, value in unet.state_dict().items():
        assert torch.equal(again.network.state_dict()[name], value), name
    with torch.no_grad():
        one, two = inferer(volume, unet), inferer(volume, unet)
    assert torch.equal(torch.as_tensor(one), torch.as_tensor(two))


def test_a_reused_working_copy_keeps_its_optimizer_in_the_state_of_a_new_one(unet, volume):
    """Adam's moments and step count, left by the last volume, are zeroed in place; the rate is lr0."""
    inferer = grata(steps=1, lr0=0.01)
    with torch.no_grad():
        inferer(volume, unet)
    episode = inferer.configure(unet, torch.device("cpu"))
    state = [t for s in episode.optimizer.state.values() for t in s.values()]
    assert state and all(torch.count_nonzero(t) == 0 for t in state)
    assert [g["lr"] for g in episode.optimizer.param_groups] == [0.01]


@pytest.mark.parametrize("stacked", [False, True])
def test_output_carries_the_batch_metadata(unet, monkeypatch, stacked):
    """The logits keep the input batch's metadata (a batch affine that decollates to each volume's),
    also when the statistics rule predicts its candidates in one batched pass (MONAI's sliding
    window returns those as unbatched MetaTensors)."""
    import grata_monai.adaptive

    monkeypatch.setattr(grata_monai.adaptive, "_stacks", lambda network, device: stacked)
    affine = torch.diag(torch.tensor([2.0, 2.0, 4.0, 1.0]))
    image = MetaTensor(torch.rand(1, 40, 36, 20, generator=torch.Generator().manual_seed(0)))
    image.affine = affine
    batch = list_data_collate([{"image": image}])["image"]
    inferer = GraTaInferer(ROI, sw_batch_size=2, patches_per_step=2, norm_stats="entropy")
    with torch.no_grad():
        out = inferer(batch, unet)
    assert out.is_batch and len(reports_of(out)) == 1
    (item,) = decollate_batch(out)
    torch.testing.assert_close(item.affine.float(), affine)


def test_channels_last_is_the_working_copys_format_on_cuda_only(unet, volume):
    """``channels_last``: channels-last weights for 3-D and 2-D windows on CUDA; on a CPU the working
    copy keeps the source's format and the report says the option was not used."""
    cuda = torch.device("cuda")
    assert grata()._memory_format(cuda) == torch.channels_last_3d
    assert GraTaInferer((16, 16))._memory_format(cuda) == torch.channels_last
    assert grata(channels_last=False)._memory_format(cuda) == torch.preserve_format
    inferer = grata(steps=1)
    assert inferer._memory_format(torch.device("cpu")) == torch.preserve_format
    copy = inferer.working_copy(unet, torch.device("cpu"))
    assert all(p.is_contiguous() for p in copy.parameters())
    with torch.no_grad():
        report = reports_of(inferer(volume, unet))[0]
    assert report["settings"]["channels_last"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="channels-last weights apply on CUDA")
def test_channels_last_segments_as_contiguous_weights(volume):
    """On CUDA the working copy's convolution weights are channels-last, and it gives the labels of
    contiguous weights."""
    source, cuda = tiny_unet().cuda(), torch.device("cuda")
    labels = {}
    for last in (True, False):
        inferer = grata(channels_last=last)
        conv = next(
            m
            for m in inferer.working_copy(source, cuda).modules()
            if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1  # one channel: both layouts
        )
        assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) is last
        with torch.no_grad():
            logits = inferer(volume.cuda(), source)
        labels[last] = logits.argmax(1)
        assert reports_of(logits)[0]["settings"]["channels_last"] is last
    assert (labels[True] == labels[False]).float().mean() > 0.999
