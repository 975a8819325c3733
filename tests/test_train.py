"""Training: config, losses (hand-computed), the canonical sample stream, resume, a tiny run."""

from __future__ import annotations

import json
import math
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metricdepth.canonical import to_canonical, training_record
from metricdepth.data.dataset import (
    StepBatchSampler,
    SyntheticSource,
    step_indices,
)
from metricdepth.data.synthetic import SynthConfig
from metricdepth.train.config import TrainConfig, config_from_dict, load_config
from metricdepth.train.loop import (
    build_dataset,
    latest_checkpoint,
    lr_factor,
    parameter_digest,
    predict_depth_m,
    run_training,
    train,
)
from metricdepth.train.losses import l1_log_loss, silog_loss

TINY_SYNTH = {"height": 32, "width": 48, "sizes": [[32, 48]], "focal_range": [40.0, 160.0]}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    raw = {
        "name": "tiny",
        "out_dir": str(tmp_path / "runs"),
        "seed": 3,
        "variant": "label",
        "canonical_focal_px": 80.0,
        "input_hw": [32, 48],
        "resize_range": [0.8, 1.25],
        "model_kwargs": {"widths": [8, 16, 32]},
        "datasets": [{"kind": "synthetic", "seed": 5, "num_scenes": 24, "synth": TINY_SYNTH}],
        "batch_size": 4,
        "steps": 6,
        "warmup_steps": 1,
        "lr": 3e-3,
        "checkpoint_every": 3,
        "log_every": 1,
        "progress": False,
        "device": "cpu",
    }
    raw.update(overrides)
    return config_from_dict(raw, base_dir=tmp_path)


# ---------------------------------------------------------------------- config
def test_yaml_config_loads_with_defaults_and_resolves_paths(tmp_path):
    path = tmp_path / "sub" / "cfg.yaml"
    path.parent.mkdir()
    path.write_text(
        "name: run1\nvariant: image\ndatasets:\n"
        "  - {kind: annotations, path: data/ann.json, weight: 2}\n"
        "  - {kind: synthetic, seed: 4, num_scenes: 10, synth: {focal_range: [100, 600]}}\n"
    )
    config = load_config(path)
    assert config.variant == "image" and config.inference_resize == "focal"
    assert config.datasets[0].path == str((path.parent / "data" / "ann.json").resolve())
    assert config.datasets[0].weight == 2.0
    assert config.datasets[1].synth == {"focal_range": [100, 600]}
    assert config.infer_hw == config.input_hw == (96, 128)
    assert config.steps == 1000 and config.batch_size == 16 and config.loss_l1_log == 1.0
    # the resolved config round-trips through its written YAML
    config.write(tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == config
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variant": "metric"}, "variant: must be one of none, label, image"),
        ({"steps": 0}, "steps: must be an integer >= 1"),
        ({"lr": -1}, "lr: must be a finite number > 0"),
        ({"input_hw": [32]}, "input_hw: must be"),
        ({"resize_range": [2, 1]}, "resize_range: must be"),
        ({"bogus": 1}, "bogus: unknown field"),
        ({"datasets": []}, "datasets: must be a non-empty list"),
        ({"datasets": [{"kind": "web"}]}, r"datasets\[0\].kind: must be one of"),
        ({"datasets": [{"kind": "annotations"}]}, r"datasets\[0\].path: must name"),
        (
            {"datasets": [{"kind": "synthetic", "synth": {"focal_range": [5, 1]}}]},
            r"datasets\[0\].synth: SynthConfig.focal_range",
        ),
        ({"datasets": [{"kind": "synthetic", "path": "x.json"}]}, r"datasets\[0\].path: only"),
        ({"model_kwargs": {"widths": [8]}}, "model_kwargs: small_unet"),
        ({"warmup_steps": 6}, "warmup_steps: must be < steps"),
        ({"loss_l1_log": 0, "loss_silog": 0}, "cannot both be 0"),
        ({"name": "a/b"}, "name: must be"),
        ({"precision": "fp16"}, "precision: must be one of fp32, bf16"),
        ({"resize_base": "crop"}, "resize_base: must be one of none, fit"),
    ],
)
def test_config_errors_are_one_line_value_errors(tmp_path, change, message):
    with pytest.raises(ValueError, match=message) as info:
        tiny(tmp_path, **change)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("config: ")


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml: invalid YAML"):
        load_config(path)


# ---------------------------------------------------------------------- losses
def test_l1_log_loss_hand_computed():
    log_pred = torch.log(torch.tensor([[[[2.0, 1.0], [4.0, 9.0]]]]))
    depth = torch.tensor([[[[1.0, 1.0], [2.0, 0.0]]]])  # last pixel invalid (0)
    mask = torch.tensor([[[[True, True], [True, True]]]])
    # |log 2| + 0 + |log 2| over 3 valid pixels
    expected = 2 * math.log(2.0) / 3
    assert float(l1_log_loss(log_pred, depth, mask)) == pytest.approx(expected, rel=1e-6)
    mask[0, 0, 0, 0] = False
    assert float(l1_log_loss(log_pred, depth, mask)) == pytest.approx(math.log(2.0) / 2, rel=1e-6)


def test_silog_loss_hand_computed_per_image():
    # image 0: g = (log 2, log 2, 0) -> mean(g^2) = 2/3 l^2, mean(g) = 2/3 l
    # image 1: g = (log 3) on one pixel (others masked) -> 1 - lambda times l3^2
    l2, l3 = math.log(2.0), math.log(3.0)
    log_pred = torch.tensor([[[l2, l2, 0.0, 5.0]], [[l3, 7.0, 7.0, 7.0]]]).reshape(2, 1, 1, 4)
    depth = torch.ones(2, 1, 1, 4)
    depth[0, 0, 0, 3] = float("nan")
    mask = torch.tensor([[[True, True, True, True]], [[True, False, False, False]]]).reshape(
        2, 1, 1, 4
    )
    lam = 0.85
    image0 = math.sqrt(2 / 3 * l2**2 - lam * (2 / 3 * l2) ** 2)
    image1 = math.sqrt((1 - lam) * l3**2)
    got = float(silog_loss(log_pred, depth, mask, lam, eps=0.0))
    assert got == pytest.approx((image0 + image1) / 2, rel=1e-6)
    # lambda = 1 is invariant to a global scale of the prediction
    shifted = float(silog_loss(log_pred + 0.7, depth, mask, 1.0, eps=0.0))
    assert shifted == pytest.approx(float(silog_loss(log_pred, depth, mask, 1.0, eps=0.0)))


def _both_losses(log_pred, depth, mask):
    """small_unet's own losses with weight 1 each (``objective.OWN_LOSSES``)."""
    return l1_log_loss(log_pred, depth, mask) + silog_loss(log_pred, depth, mask, 0.85)


def test_losses_ignore_masked_pixels_and_survive_an_empty_mask():
    log_pred = torch.zeros(1, 1, 2, 2, requires_grad=True)
    depth = torch.tensor([[[[2.0, float("inf")], [0.0, -1.0]]]])
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    loss = _both_losses(log_pred, depth, mask)
    loss.backward()
    assert torch.isfinite(loss)
    grad = log_pred.grad[0, 0]
    assert grad[0, 0] != 0 and grad[0, 1] == 0 and grad[1, 0] == 0 and grad[1, 1] == 0
    empty = torch.zeros_like(mask)
    pred = torch.zeros(1, 1, 2, 2, requires_grad=True)
    zero = _both_losses(pred, depth, empty)
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_loss_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="share a shape"):
        l1_log_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 3), torch.ones(1, 1, 2, 3))


def test_learning_rate_warmup_and_cosine(tmp_path):
    config = tiny(tmp_path, steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(60, config) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_factor(110, config) == pytest.approx(0.1)
    poly = tiny(tmp_path, steps=110, warmup_steps=10, min_lr_ratio=0.0, schedule="poly")
    assert lr_factor(60, poly) == pytest.approx(0.5**0.9)


# ---------------------------------------------------------------------- data
def test_samples_carry_canonical_labels_of_their_record(tmp_path):
    config = tiny(tmp_path, flip_prob=0.0, resize_range=[0.6, 1.6])
    dataset = build_dataset(config)
    source = dataset.sources[0]
    for index in range(6):
        canvas, record, _ = dataset.sample(index)
        _, item = dataset.locate(index)
        frame = source.frame(item)
        # the record is the one training_record draws from the sample's stream
        again = training_record(
            frame.camera,
            dataset.space,
            np.random.default_rng([config.seed, 3, index]),
            variant="label",
            resize_range=(0.6, 1.6),
        )
        assert again == record
        expected = to_canonical(frame, record, pad_rgb=dataset.space.pad_rgb)
        np.testing.assert_array_equal(canvas.depth, expected.depth)
        np.testing.assert_array_equal(canvas.mask, expected.mask)
        # label variant: depth_c = depth_m * f_c / f_eff on every valid pixel
        assert record.label_scale == pytest.approx(80.0 / (record.focal_px * record.scale))
        item = dataset[index]
        assert item["image"].shape == (3, 32, 48) and item["depth_c"].shape == (1, 32, 48)
        assert torch.equal(item["mask"][0], torch.from_numpy(expected.mask))
        top, bottom, left, right = record.pad
        if top:
            assert not item["mask"][0, :top].any()  # padding is never a label
        if left:
            assert not item["mask"][0, :, :left].any()


def test_variants_scale_labels_as_the_canonical_transform_says(tmp_path):
    for variant in ("none", "label", "image"):
        dataset = build_dataset(tiny(tmp_path, variant=variant, flip_prob=0.0))
        for index in range(3):
            canvas, record, _ = dataset.sample(index)
            frame = dataset.sources[0].frame(dataset.locate(index)[1])
            t = record.to_scale_ratio
            assert 0.8 <= t <= 1.25
            if variant == "none":
                assert record.label_scale == 1.0 and record.scale == t
            elif variant == "label":  # labels x f_c / (f t)
                assert record.label_scale == pytest.approx(80.0 / (record.focal_px * t))
            else:  # image resized to the canonical focal: f_eff = f_c t, labels / t
                assert record.scale == pytest.approx(t * 80.0 / record.focal_px)
                assert record.f_eff_px == pytest.approx(80.0 * t)
                assert record.label_scale == pytest.approx(1.0 / t)
            # every label divided by the scale is one of the frame's metric depths
            metric = canvas.depth[canvas.mask] / np.float32(record.label_scale)
            source = np.unique(frame.depth[frame.mask])
            nearest = source[np.clip(np.searchsorted(source, metric), 0, source.size - 1)]
            below = source[np.clip(np.searchsorted(source, metric) - 1, 0, source.size - 1)]
            error = np.minimum(np.abs(nearest - metric), np.abs(below - metric)) / metric
            assert metric.size > 0 and error.max() < 1e-5, variant


def test_depth_range_and_invalid_pixels_are_masked(tmp_path):
    config = tiny(
        tmp_path,
        min_depth_m=2.0,
        max_depth_m=6.0,
        flip_prob=0.0,
        variant="none",
        resize_range=[1.0, 1.0],
    )
    dataset = build_dataset(config)
    canvas, record, _ = dataset.sample(0)
    metric = canvas.depth[canvas.mask]
    assert metric.size > 0 and metric.min() >= 2.0 and metric.max() <= 6.0


def test_stream_is_deterministic_and_ranks_read_disjoint_indices(tmp_path):
    a = build_dataset(tiny(tmp_path))
    b = build_dataset(tiny(tmp_path))
    for index in (0, 7, 30):
        x, y = a[index], b[index]
        assert all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)
    assert not torch.equal(a[0]["image"], a[1]["image"])
    seen = [set(step_indices(s, 4, r, 2)) for s in range(3) for r in range(2)]
    assert len(set().union(*seen)) == 24  # 3 steps x 2 ranks x 4, no overlap
    assert list(StepBatchSampler(2, 4, 3, rank=1, world_size=2)) == [[15, 16, 17], [21, 22, 23]]
    # one source, 24 scenes: the first epoch visits every scene once
    assert sorted(a.locate(i)[1] for i in range(24)) == list(range(24))


def test_mixing_follows_the_weights(tmp_path):
    second = {"kind": "synthetic", "seed": 6, "num_scenes": 10, "synth": TINY_SYNTH, "weight": 1}
    first = {"kind": "synthetic", "seed": 5, "num_scenes": 24, "synth": TINY_SYNTH, "weight": 3}
    dataset = build_dataset(tiny(tmp_path, datasets=[first, second]))
    picks = np.array([dataset.locate(i)[0] for i in range(4000)])
    assert abs(float(np.mean(picks == 0)) - 0.75) < 0.03


def test_annotation_datasets_train_like_synthetic_ones(tmp_path):
    from metricdepth.data.synthetic import write_dataset

    json_path = write_dataset(
        tmp_path / "data",
        6,
        seed=5,
        config=SynthConfig(height=32, width=48, sizes=((32, 48),), focal_range=(40.0, 160.0)),
    )
    config = tiny(
        tmp_path, datasets=[{"kind": "annotations", "path": "data/annotations.json"}], flip_prob=0.0
    )
    assert config.datasets[0].path == str(json_path.resolve())
    dataset = build_dataset(config)
    canvas, record, _ = dataset.sample(0)
    frame = dataset.sources[0].frame(dataset.locate(0)[1])
    assert record.camera == frame.camera and canvas.mask.any()
    # PNG millimetres: the labels are the rendered depth to 0.5 mm
    synthetic = SyntheticSource(
        5, 6, SynthConfig(height=32, width=48, sizes=((32, 48),), focal_range=(40.0, 160.0))
    )
    rendered = synthetic.frame(dataset.locate(0)[1])
    assert np.abs(frame.depth - rendered.depth).max() <= 0.0005 + 1e-6


# ---------------------------------------------------------------------- the loop
def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    whole = train(tiny(tmp_path, name="whole"))
    cut = tiny(tmp_path, name="cut")
    train(cut, stop_at_step=3)  # "killed" after the step-3 checkpoint
    assert latest_checkpoint(tmp_path / "runs" / "cut").name == "step_0000003.pt"
    assert not (tmp_path / "runs" / "cut" / "model.safetensors").exists()
    resumed = train(cut)
    a, b = _state(whole), _state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    rank_a = json.loads((whole / "rank_0.json").read_text())
    rank_b = json.loads((resumed / "rank_0.json").read_text())
    assert rank_a["parameters_and_buffers_sha256"] == rank_b["parameters_and_buffers_sha256"]
    assert json.loads((resumed / "summary.json").read_text())["resumed_from_step"] == 3
    log = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5, 6]
    # checkpoints are weights-only loadable (plain types and tensors)
    state = torch.load(latest_checkpoint(resumed), map_location="cpu", weights_only=True)
    assert state["step"] == 6 and isinstance(state["torch_rng"], torch.Tensor)


def test_bf16_training_runs_under_autocast_resumes_exactly_and_is_not_fp32(tmp_path):
    whole = train(tiny(tmp_path, name="bf16", precision="bf16"))
    cut = tiny(tmp_path, name="bf16-cut", precision="bf16")
    train(cut, stop_at_step=3)
    resumed = train(cut)
    a, b = _state(whole), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit, like fp32
    assert all(v.dtype != torch.bfloat16 for v in a.values())  # weights stay float32
    fp32 = _state(train(tiny(tmp_path, name="fp32")))
    # the forward really ran in bfloat16: same seed and data, different weights
    assert any(not torch.equal(a[k], fp32[k]) for k in a if a[k].is_floating_point())
    with pytest.raises(ValueError, match="'precision' changed"):
        train(tiny(tmp_path, name="bf16-cut", precision="fp32", steps=6))


def test_resume_refuses_a_changed_config_and_resume_false(tmp_path):
    train(tiny(tmp_path, name="r"), stop_at_step=3)
    with pytest.raises(ValueError, match="'lr' changed"):
        train(tiny(tmp_path, name="r", lr=1e-3))
    with pytest.raises(ValueError, match="already has checkpoints"):
        train(tiny(tmp_path, name="r"), resume=False)


def test_tiny_run_from_yaml_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    from metricdepth.models.registry import load_model

    config = tiny(tmp_path, name="fit", steps=60, warmup_steps=5, checkpoint_every=30, lr=5e-3)
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    run_dir = run_training(path, out_dir=tmp_path / "elsewhere")
    assert run_dir == tmp_path / "elsewhere" / "fit"
    assert (run_dir / "config.yaml").is_file()
    assert load_config(run_dir / "config.yaml").training_fields() == config.training_fields()

    dataset = build_dataset(config)
    batch = [dataset[i] for i in range(16)]
    x = torch.stack([b["image"] for b in batch])
    depth = torch.stack([b["depth_c"] for b in batch])
    mask = torch.stack([b["mask"] for b in batch])

    def loss_of(net) -> float:
        with torch.no_grad():
            return float(l1_log_loss(net.eval()(x)["log_depth_c"], depth, mask))

    from metricdepth.train.loop import _init_output_bias, build_network

    torch.manual_seed(config.seed)
    start = build_network(config)
    _init_output_bias(start, dataset)
    model = load_model(run_dir / "model.safetensors")
    assert model.spec.space.variant == "label" and model.spec.space.resize == "fit"
    assert model.spec.space.focal_px == 80.0 and model.spec.arch == "small_unet"
    before, after = loss_of(start), loss_of(model.net)
    assert after < 0.8 * before, (before, after)

    frame = dataset.sources[0].frame(0)
    depth_m = predict_depth_m(model, frame.image, frame.camera)
    assert depth_m.shape == frame.depth.shape and (depth_m > 0).all()
    # a second call with the same config finds the run finished and leaves it as it is
    digest = parameter_digest(model.net)
    assert run_training(path, out_dir=tmp_path / "elsewhere") == run_dir
    assert parameter_digest(load_model(run_dir / "model.safetensors").net) == digest


def test_precise_batch_norm_averages_the_statistics_of_later_batches(tmp_path):
    """``precise_bn_batches``: the stem BatchNorm's running mean and variance become the plain
    averages of the batch means and (unbiased) variances of its input over the next batches
    (recomputed here from the saved weights); a resumed run gets the same buffers."""
    n = 5
    config = tiny(tmp_path, name="pbn", precise_bn_batches=n)
    run_dir = train(config)
    state = _state(run_dir)
    plain = _state(train(tiny(tmp_path, name="plain")))
    weights = [k for k in state if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(state[k], plain[k]) for k in weights)  # only the statistics change

    from metricdepth.models.small import build_small_unet

    net = build_small_unet(**config.model_kwargs)
    net.load_state_dict(state)
    conv = net.stem[0][0]  # the stem's first convolution feeds its first BatchNorm
    dataset = build_dataset(config)
    means, variances = [], []
    with torch.no_grad():
        for batch in StepBatchSampler(config.steps, config.steps + n, config.batch_size):
            x = torch.stack([dataset[g]["image"] for g in batch])
            y = conv(x).transpose(0, 1).flatten(1).double()  # (C, B*H*W)
            means.append(y.mean(1))
            variances.append(y.var(1, unbiased=True))
    expected_mean = torch.stack(means).mean(0).float()
    expected_var = torch.stack(variances).mean(0).float()
    torch.testing.assert_close(state["stem.0.1.running_mean"], expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state["stem.0.1.running_var"], expected_var, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(state["stem.0.1.running_mean"], plain["stem.0.1.running_mean"])
    cut = tiny(tmp_path, name="pbn-cut", precise_bn_batches=n)
    train(cut, stop_at_step=3)
    resumed = _state(train(cut))
    assert all(torch.equal(state[k], resumed[k]) for k in state)


@pytest.mark.parametrize("world_size, accumulate", [(1, 1), (2, 1), (3, 2)])
def test_precise_batch_norm_reads_only_samples_no_process_trained_on(world_size, accumulate):
    """Under DDP every process trains on its own slice of one stream: the batches that
    re-estimate the BatchNorm statistics start after all ``steps * accumulate * world_size``
    trained batches, so none of them repeats a trained sample."""
    from metricdepth.train.loop import precise_batch_norm

    class Recording(torch.utils.data.Dataset):
        def __init__(self):
            self.read: list[int] = []

        def __getitem__(self, index):
            self.read.append(int(index))
            return {"image": torch.full((3, 4, 4), float(index))}

    config = dataclasses_replace(
        tiny(Path(".")), steps=5, batch_size=2, accumulate=accumulate, precise_bn_batches=3
    )
    trained = {
        g
        for step in range(config.steps)
        for rank in range(world_size)
        for g in step_indices(step, config.batch_size * accumulate, rank, world_size)
    }
    dataset = Recording()
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    precise_batch_norm(net, dataset, config, torch.device("cpu"), world_size=world_size)
    first = max(trained) + 1
    assert dataset.read == list(range(first, first + 3 * config.batch_size))
    assert not trained & set(dataset.read)


def test_the_log_reports_the_decoder_and_encoder_rates_by_group(tmp_path):
    """``lr`` is the decoder's rate and ``lr_encoder`` the encoder's, read by group name (not
    the last group's): with the decoder frozen there is no decoder rate to log."""
    config = tiny(
        tmp_path, name="rates", steps=3, lr_encoder=1e-3, lr_decoder=5e-3, min_lr_ratio=0.5
    )
    frozen = tiny(
        tmp_path, name="enc-only", steps=3, lr_encoder=1e-3, freeze=["up.", "head.", "context."]
    )
    for run, decoder in ((config, 5e-3), (frozen, None)):
        lines = (train(run) / "log.jsonl").read_text().splitlines()
        entries = [json.loads(line) for line in lines]
        assert [e["step"] for e in entries] == [1, 2, 3]
        for e in entries:
            factor = lr_factor(e["step"], run)
            assert e["lr_encoder"] == pytest.approx(1e-3 * factor, rel=1e-12)
            if decoder is None:
                assert e["lr"] is None
            else:
                assert e["lr"] == pytest.approx(decoder * factor, rel=1e-12)


def test_init_from_our_safetensors_must_share_its_focal_and_variant(tmp_path):
    """A ``.safetensors`` init_from predicts in its spec's space: a config with another f_c or
    variant would retrain it at another label scale, so it is refused (same space: accepted)."""
    from metricdepth.models.registry import save_model
    from metricdepth.train.loop import build_network, model_spec

    base = tiny(tmp_path, name="base")  # f_c 80, label variant
    weights = tmp_path / "base.safetensors"
    save_model(build_network(base), model_spec(base), weights)
    same = tiny(tmp_path, name="next", init_from=str(weights))
    assert same.init_from == str(weights.resolve())
    with pytest.raises(ValueError, match=r"canonical_focal_px: init_from base\.safetensors "
                       r"predicts at f_c = 80 px, got 100"):  # fmt: skip
        tiny(tmp_path, name="next", init_from=str(weights), canonical_focal_px=100.0)
    with pytest.raises(ValueError, match="variant: init_from base.safetensors was trained as "
                       "'label', got 'none'"):  # fmt: skip
        tiny(tmp_path, name="next", init_from=str(weights), variant="none")


@pytest.mark.parametrize("name", ["metric3d-vit-small", "metric3d-convnext-large"])
def test_a_trained_model_cannot_take_an_official_models_name(tmp_path, name):
    """Every registered name is refused, not only the bundled one's (bundled_name does not
    unlock an official name), in the config and in a TrainConfig built directly."""
    for raw in ({"name": name}, {"name": "x", "model_name": name}):
        for bundled in (False, True):
            with pytest.raises(ValueError, match=f"config: model_name: '{name}' is a registered"):
                tiny(tmp_path, bundled_name=bundled, **raw)
    with pytest.raises(ValueError, match="registered model's name"):
        TrainConfig(name=name, datasets=tiny(tmp_path).datasets)
    assert tiny(tmp_path, name=f"{name}-kitchen").model_name == f"{name}-kitchen"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"^device 'cuda:0': no CUDA device here"):
        train(tiny(tmp_path, device="cuda"))
    assert not (tmp_path / "runs").exists()  # refused before anything is written


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, capsys, native):
    import metricdepth.train.loop as loop

    assert loop.native_bf16(torch.device("cuda")) is True  # CUDA: always native
    monkeypatch.setattr(loop, "native_bf16", lambda device: native)
    train(tiny(tmp_path, name="bf16-warn", precision="bf16", steps=2, warmup_steps=1))
    err = capsys.readouterr().err
    warned = "warning: precision bf16 on a CPU without native bfloat16" in err
    assert warned is (not native)
