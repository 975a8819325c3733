"""Training the official architectures: training-mode outputs, config, objective, optimiser
groups, freezing, gradient accumulation, activation checkpointing, init_from and the saved model.

Most tests use ``metric3d_vit`` with the test-only ``size: tiny`` (the same architecture: 2
blocks of width 32, a 2-iteration RAFT decoder) on 56x84 synthetic canvases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dense_frames import TINY_VIT_SYNTH, tiny_vit_config
from lossfix_util import lossfix_dir, missing
from metricdepth.train import arch
from metricdepth.train.config import config_from_dict, load_config
from metricdepth.train.loop import build_dataset, build_network, parameter_digest, train
from metricdepth.train.objective import compute_loss, loss_generator
from metricdepth.train.optim import make_optimizer, make_scheduler
from metricdepth.train.step import official_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread

ROOT = Path(__file__).resolve().parent.parent
SYNTH = TINY_VIT_SYNTH


def vit_tiny(tmp_path: Path, **overrides):
    raw = tiny_vit_config(
        "vit", seed=2, scene_seed=3, num_scenes=16, out_dir=str(tmp_path / "runs"),
        resize_range=[0.9, 1.1], lr=1e-3, checkpoint_every=2, log_every=1,
    )  # fmt: skip
    raw.update(overrides)
    return config_from_dict(raw, base_dir=tmp_path)


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


# ---------------------------------------------------------------------- training-mode outputs
def test_vit_training_mode_returns_every_iteration_and_eval_is_unchanged():
    torch.manual_seed(0)
    net = arch.build_network("metric3d_vit", {"size": "tiny"})
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        train_out = net.train()(x, return_intermediates=True)
        eval_out = net.eval()(x)
    assert set(eval_out) == {"depth_c", "confidence", "normal"}
    iters = net.cfg.head.iters
    for key, channels in (("predictions_list", 1), ("confidence_list", 1), ("normal_out_list", 4)):
        assert len(train_out[key]) == iters + 1
        assert all(t.shape == (2, channels, 56, 84) for t in train_out[key])
    assert train_out["predictions_list"][-1] is train_out["depth_c"]
    assert train_out["normal_out_list"][-1] is train_out["normal"]
    # no dropout or BatchNorm: the last iteration is the inference output, bit for bit
    for key in ("depth_c", "confidence", "normal"):
        assert torch.equal(train_out[key], eval_out[key])
    # entry 0: the initial 1/4 state upsampled bilinearly (align_corners=True), as depth
    state = train_out["intermediates"]["state_init"]
    up = F.interpolate(state, scale_factor=4, mode="bilinear", align_corners=True)
    expected = (up[:, :1] * 100 + 200).clamp(0.1, 200)
    torch.testing.assert_close(train_out["predictions_list"][0], expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(train_out["confidence_list"][0], up[:, 1:2])
    # the intermediate iterations are those the parity record has
    for got, want in zip(
        train_out["predictions_list"][1:], train_out["intermediates"]["depth_iters"], strict=True
    ):
        assert torch.equal(got, want)
    assert all((t >= 0.1).all() and (t <= 200).all() for t in train_out["predictions_list"])


def _floor_case(mode: str):
    """Tiny ViT in training mode whose last depth-delta bias pushes every pixel far below the
    0.1 floor; the GRU-sequence objective's gradient w.r.t. that bias, and the outputs."""
    torch.manual_seed(0)
    net = arch.build_network("metric3d_vit", {"size": "tiny"})
    arch.set_clamp_gradient(net, mode)
    head = net.depth_model.decoder
    bias = head.update_block.flow_head.conv2d.bias
    with torch.no_grad():
        bias[0] = -50.0  # state -50 per iteration: depth 100 * -50 + 200, far below 0.1
    x = torch.randn(1, 3, 56, 84)
    out = net(x)
    target = torch.full_like(out["depth_c"], 5.0)
    loss = sum((p - target).abs().mean() for p in out["predictions_list"][1:])
    (grad,) = torch.autograd.grad(loss, bias)
    return out, grad[0]


def test_clamp_gradient_straight_through_keeps_values_and_lets_the_floor_learn():
    official, grad_official = _floor_case("official")
    passing, grad_passing = _floor_case("straight_through")
    # every pixel at the floor (0.1 through float32 ReLUs: 200 - 199.9 = 0.1000061)
    assert (official["depth_c"] < 0.1001).all()
    for key in ("depth_c", "confidence", "normal"):
        assert torch.equal(official[key], passing[key])  # same code path for values
    assert grad_official == 0.0  # the ReLU floor passes no gradient: the state is stuck
    # straight-through: L1 towards 5 > 0.1 pushes the state up (negative gradient)
    assert grad_passing < -1.0
    with pytest.raises(ValueError, match="clamp_gradient must be one of"):
        arch.set_clamp_gradient(arch.build_network("metric3d_vit", {"size": "tiny"}), "leaky")


def test_training_applies_the_configured_clamp_gradient(tmp_path):
    assert vit_tiny(tmp_path).clamp_gradient == "straight_through"
    assert vit_tiny(tmp_path, clamp_gradient="official").clamp_gradient == "official"
    with pytest.raises(ValueError, match="clamp_gradient: must be one of"):
        vit_tiny(tmp_path, clamp_gradient="leaky")


def test_convnext_training_mode_returns_one_entry_lists():
    torch.manual_seed(0)
    net = arch.build_network("metric3d_convnext", {"size": "tiny"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = net.train()(x)
        assert "predictions_list" not in net.eval()(x)
    assert out["predictions_list"] == [out["depth_c"]] and len(out["confidence_list"]) == 1


# ---------------------------------------------------------------------- config
def test_official_arch_defaults_and_round_trip(tmp_path):
    config = config_from_dict(
        {
            "name": "v",
            "arch": "metric3d_vit",
            "model_kwargs": {"size": "small"},
            "datasets": [{"kind": "synthetic"}],
        }
    )
    assert config.canonical_focal_px == 1000.0
    assert config.input_hw == config.infer_hw == (616, 1064)
    assert config.losses == {"gru_sequence": 1.0} and config.loss_l1_log == 0.0
    assert config.loss_mode == "corrected" and config.loss_preset is None
    assert config_from_dict(config.to_dict()) == config
    small = vit_tiny(tmp_path, arch="small_unet", model_kwargs={}, input_hw=[32, 48])
    assert small.losses == {"l1_log": 1.0}  # the legacy fields still decide small_unet's loss
    mixed = vit_tiny(
        tmp_path,
        losses={"gru_sequence": 0.5, "silog": 0.25, "vnl": {"weight": 1, "sample_ratio": 0.1}},
    )
    assert mixed.losses["vnl"] == {"weight": 1.0, "sample_ratio": 0.1}
    assert mixed.loss_silog == 0.0  # the official SiLog, not small_unet's shorthand
    assert config_from_dict(mixed.to_dict()) == mixed


def test_loss_preset_resolves_to_the_official_list_and_round_trips(tmp_path):
    from metricdepth.train.loss_presets import preset
    from metricdepth.train.loss_set import terms_from_config

    config = vit_tiny(tmp_path, loss_preset="vit.raft5.large.kitti.py", loss_mode="official")
    assert config.loss_preset == "vit.raft5.large.kitti" and config.loss_mode == "official"
    assert list(config.losses) == ["vnl", "gru_sequence", "deno"]
    assert [t.weight for t in terms_from_config(config.losses)] == [0.1, 1.0, 0.001]
    official = preset("vit.raft5.large.kitti").losses
    for ours, theirs in zip(terms_from_config(config.losses), official, strict=True):
        assert (ours.loss, ours.branch, ours.weight) == (theirs.loss, theirs.branch, theirs.weight)
        assert theirs.kwargs_dict().items() <= ours.kwargs_dict().items()
    assert config_from_dict(config.to_dict()) == config  # losses and loss_preset agree
    pre = vit_tiny(tmp_path, loss_preset="vit.raft5.small")
    assert list(pre.losses) == [
        "vnl", "gru_sequence", "sky", "hdn", "hdsn", "pwn_planes", "normal_branch", "deno",
        "sky_gru",
    ]  # fmt: skip
    assert pre.losses["deno"]["depth_detach"] is True and pre.losses["sky_gru"]["weight"] == 0.001


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"losses": {"vnl_typo": 1.0}}, "losses: unknown loss 'vnl_typo'; known: gru_sequence"),
        ({"losses": {"vnl": {"weight": 1, "ratio": 2}}}, "unknown argument\\(s\\) ratio"),
        ({"losses": {"vnl": {"sample_ratio": 0.2}}}, "losses.vnl.weight: must be a finite"),
        ({"losses": {"vnl": -1}}, "losses.vnl: must be a finite number >= 0"),
        (
            {"arch": "small_unet", "model_kwargs": {}, "losses": {"gru_sequence": 1}},
            "unknown loss 'gru_sequence' for small_unet \\(its own losses: l1_log, silog",
        ),
        (
            {"arch": "small_unet", "model_kwargs": {}, "loss_mode": "official"},
            "loss_mode: applies to the official Metric3D losses",
        ),
        (
            {
                "arch": "metric3d_convnext",
                "input_hw": [64, 96],
                "infer_hw": [64, 96],
                "losses": {"gru_sequence": 1, "deno": 0.01},
            },
            "losses: loss 'deno' \\(DeNoConsistencyLoss\\) needs the output 'normal_out_list', "
            "which metric3d_convnext does not return",
        ),
        (
            {
                "arch": "metric3d_convnext",
                "input_hw": [64, 96],
                "infer_hw": [64, 96],
                "loss_mode": "official",
            },
            "losses: loss 'gru_sequence' in loss_mode official divides by zero",
        ),
        ({"loss_mode": "buggy"}, "loss_mode: must be one of corrected, official"),
        ({"loss_preset": "vit.raft5.tiny"}, "loss_preset: no preset 'vit.raft5.tiny'; known"),
        (
            {"loss_preset": "vit.raft5.large.kitti", "losses": {"gru_sequence": 1}},
            "losses: differ from loss_preset vit.raft5.large.kitti; give one of them",
        ),
        ({"losses": {"silog": 0}}, "losses: every weight is 0"),
        ({"input_hw": [56, 80]}, "input_hw: metric3d_vit needs multiples of 28"),
        ({"model_kwargs": {"size": "huge"}}, "model_kwargs: unknown Metric3D ViT size 'huge'"),
        ({"freeze": ["depth_model.nothing"]}, "freeze: 'depth_model.nothing' matches no param"),
        ({"freeze": 3}, "freeze: must be 'encoder' or a list"),
        ({"accumulate": 0}, "accumulate: must be an integer >= 1"),
        ({"adam_betas": [0.9, 1.0]}, "adam_betas: must be"),
        (
            {"arch": "small_unet", "model_kwargs": {}, "activation_checkpointing": True},
            "activation_checkpointing: applies to metric3d_vit only",
        ),
        (
            {"init_from": "official.pth", "canonical_focal_px": 500.0},
            "canonical_focal_px: official weights predict at f_c = 1000 px",
        ),
        ({"losses": {"silog": 1}, "loss_l1_log": 1}, "loss_l1_log: applies to small_unet's own"),
        (
            {"arch": "small_unet", "model_kwargs": {}, "losses": {"silog": 1}, "loss_l1_log": 1},
            "loss_l1_log: is 1.0, but losses says 0",
        ),
    ],
)
def test_config_errors_name_the_field(tmp_path, change, message):
    overrides = dict(change)
    if overrides.get("arch") == "small_unet":
        overrides.setdefault("input_hw", [32, 48])
        overrides.setdefault("infer_hw", [32, 48])
    with pytest.raises(ValueError, match=message) as info:
        vit_tiny(tmp_path, **overrides)
    assert "\n" not in str(info.value) and str(info.value).startswith("config: ")


@pytest.mark.parametrize("size", ["small", "large", "giant2"])
def test_finetune_presets_load_and_carry_the_official_kitti_values(size):
    config = load_config(ROOT / "configs" / f"finetune-vit-{size}-kitti.yaml")
    assert config.arch == "metric3d_vit" and config.model_kwargs == {"size": size}
    assert config.init_from.endswith(f"metric_depth_vit_{size}_800k.pth")
    from metricdepth.train.loss_set import terms_from_config

    kitti = [(t.loss, t.weight) for t in terms_from_config(config.losses)]
    assert kitti == [("VNLoss", 0.1), ("GRUSequenceLoss", 1.0), ("DeNoConsistencyLoss", 0.001)]
    assert config.loss_mode == "corrected"
    table_path = lossfix_dir() / "loss_config_table.json"
    missing(table_path, "the official loss config table")
    table = json.loads(table_path.read_text())
    name = "vit.raft5.giant2.kitti.py" if size == "giant2" else "vit.raft5.large.kitti.py"
    official = table["configs"][name]
    opt, lr = official["optimizer"]["value"], official["lr_config"]["value"]
    assert (config.lr_encoder, config.weight_decay_encoder) == (
        opt["encoder"]["lr"],
        opt["encoder"]["weight_decay"],
    )
    assert (config.lr_decoder, config.weight_decay_decoder) == (
        opt["decoder"]["lr"],
        opt["decoder"]["weight_decay"],
    )
    assert config.adam_eps == opt["encoder"]["eps"] == opt["decoder"]["eps"]
    assert list(config.adam_betas) == opt["encoder"]["betas"]
    assert (config.schedule, config.warmup_steps, config.min_lr) == (
        lr["policy"],
        lr["warmup_iters"],
        lr["min_lr"],
    )
    assert config.steps == official["runner"]["value"]["max_iters"]
    assert config.batch_size == official["batchsize_per_gpu"]["value"]
    assert config.grad_clip == 2.5 and config.precision == "bf16"


# ---------------------------------------------------------------------- objective
def test_compute_loss_of_an_official_arch_is_the_loss_set_on_the_same_draws(tmp_path):
    from metricdepth.train.loss_set import loss_terms, terms_from_config

    losses = {"gru_sequence": 0.5, "vnl": 1.0, "hdn": 0.5, "silog": 2.0, "deno": 0.01}
    synthetic = {"kind": "synthetic", "seed": 3, "num_scenes": 16, "synth": SYNTH}
    datasets = [dict(synthetic, data_type="lidar")]  # a type SiLog applies to
    config = vit_tiny(tmp_path, losses=losses, datasets=datasets)
    dataset = build_dataset(config)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    torch.manual_seed(0)
    net = build_network(config)
    out = net(batch["image"])
    # DeNo uses pixels of confidence > 0.5 only: lift the untrained network's (about -0.2)
    out["confidence_list"] = [c + 1.0 for c in out["confidence_list"]]
    official = official_batch(batch, torch.device("cpu"))
    assert ((official["target"] > 0) == official["mask"]).all()
    assert official["intrinsic"].shape == (2, 3, 3) and official["pad"].shape == (2, 4)
    terms = compute_loss(out, official, config, generator=loss_generator(config.seed, 3))
    direct = loss_terms(
        out, official, terms_from_config(losses), generator=loss_generator(config.seed, 3)
    )
    names = ["GRUSequenceLoss", "VNLoss", "HDNRandomLoss", "SilogLoss", "DeNoConsistencyLoss"]
    assert list(terms) == list(direct) == [f"decode_{n}" for n in names] + ["total"]
    for key in terms:  # the same code on the same inputs and draws: bit equal
        assert torch.equal(terms[key], direct[key]), key
    assert all(torch.isfinite(v) and v != 0 for v in terms.values())
    assert terms["total"].item() == pytest.approx(
        sum(terms[k].item() for k in terms if k != "total")
    )
    # the draws follow the step: another step draws other VNL triplets, the same step the same
    other = compute_loss(out, official, config, generator=loss_generator(config.seed, 4))
    again = compute_loss(out, official, config, generator=loss_generator(config.seed, 3))
    assert torch.equal(again["total"], terms["total"])
    assert other["decode_VNLoss"] != terms["decode_VNLoss"]
    assert torch.equal(other["decode_GRUSequenceLoss"], terms["decode_GRUSequenceLoss"])
    # loss_mode reaches every loss
    buggy = vit_tiny(tmp_path, losses=losses, loss_mode="official")
    terms_official = compute_loss(out, official, buggy, generator=loss_generator(buggy.seed, 3))
    direct_official = loss_terms(
        out,
        official,
        terms_from_config(losses),
        mode="official",
        generator=loss_generator(buggy.seed, 3),
    )
    assert all(torch.equal(terms_official[k], direct_official[k]) for k in terms_official)
    assert terms_official["decode_VNLoss"] != terms["decode_VNLoss"]  # quirk 4: fx for fy
    terms["total"].backward()
    assert net.depth_model.decoder.update_block.flow_head.conv2d.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------- optimisation
def test_encoder_and_decoder_groups_take_their_own_rates(tmp_path):
    config = vit_tiny(
        tmp_path,
        steps=10,
        lr_encoder=1e-5,
        lr_decoder=1e-3,
        weight_decay_encoder=0.5,
        schedule="poly",
        min_lr=1e-6,
        warmup_steps=2,
    )
    net = build_network(config)
    arch.apply_freeze(net, config.arch, config.freeze)
    optimizer = make_optimizer(net, config)
    names = {id(p): n for n, p in net.named_parameters()}
    for group in optimizer.param_groups:
        encoder = group["name"].startswith("encoder")
        assert all(
            names[id(p)].startswith("depth_model.encoder.") == encoder for p in group["params"]
        )
        assert group["lr"] == (1e-5 if encoder else 1e-3)
        wanted = {"encoder.decay": 0.5, "decoder.decay": config.weight_decay}
        assert group["weight_decay"] == wanted.get(group["name"], 0.0)
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in net.parameters() if p.requires_grad}
    assert "depth_model.encoder.mask_token" not in {names[i] for i in in_groups}
    scheduler = make_scheduler(optimizer, config)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    # poly decay ends at min_lr in every group
    assert all(g["lr"] == pytest.approx(1e-6) for g in optimizer.param_groups)


def test_freeze_encoder_keeps_it_unchanged_and_out_of_the_optimiser(tmp_path):
    config = vit_tiny(tmp_path, name="frozen", freeze="encoder")
    torch.manual_seed(config.seed)
    initial = dict(build_network(config).state_dict())
    trained = _state(train(config))
    encoder = [k for k in initial if k.startswith("depth_model.encoder.")]
    decoder = [k for k in initial if k.startswith("depth_model.decoder.")]
    assert encoder and all(torch.equal(initial[k], trained[k]) for k in encoder)
    assert any(not torch.equal(initial[k], trained[k]) for k in decoder)
    net = build_network(config)
    frozen = arch.apply_freeze(net, config.arch, config.freeze)
    assert set(frozen) == {n for n, _ in net.named_parameters() if n in encoder}
    assert not any(p.requires_grad for n, p in net.named_parameters() if n in frozen)
    groups = make_optimizer(net, config).param_groups
    assert all(not g["name"].startswith("encoder") for g in groups)


def test_accumulating_two_batches_of_two_equals_one_batch_of_four(tmp_path):
    """With every pixel labelled (``dense_frames``) the official GRU-sequence loss of a batch is
    the mean of its images' losses, and the tiny ViT has no BatchNorm, so 2 micro-batches of 2
    give the gradient of one batch of 4: with float64 weights and data to 1e-6 of the largest
    gradient (the decoder interpolates and the objective reads outputs in float32; in plain
    float32, near-cancelling sums move by ~3e-5 of it). The float32 runs end with the same
    weights after 2 AdamW steps up to 1 % of one step (lr 1e-3: 1e-5 absolute)."""
    from dense_frames import write_dense_annotations
    from metricdepth.train.step import accumulate_gradients, split_batch

    dense = write_dense_annotations(tmp_path / "dense")
    common = {
        "losses": {"gru_sequence": 1.0},
        "steps": 2,
        "lr": 1e-3,
        "resize_range": [1.0, 1.0],
        "datasets": [{"kind": "annotations", "path": str(dense), "data_type": "denselidar"}],
    }
    config = vit_tiny(tmp_path, name="b4", batch_size=4, **common)
    batch = torch.utils.data.default_collate([build_dataset(config)[i] for i in range(4)])
    assert batch["mask"].all() and (batch["depth_c"] > 100).all()
    batch = {
        k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in batch.items()
    }
    torch.manual_seed(0)
    net = build_network(config).double()
    grads = []
    for size in (4, 2):
        net.zero_grad()
        terms = accumulate_gradients(net, split_batch(batch, size), config, torch.device("cpu"))
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
        assert terms["total"] > 0
    scale = max(g.abs().max().item() for g in grads[0].values())
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=0, atol=1e-6 * scale)

    four = _state(train(config))
    two = _state(train(vit_tiny(tmp_path, name="b2x2", batch_size=2, accumulate=2, **common)))
    one = _state(train(vit_tiny(tmp_path, name="b2", batch_size=2, **common)))
    assert four.keys() == two.keys()
    for key in four:
        torch.testing.assert_close(two[key], four[key], rtol=0, atol=1e-5)
    # and it is not trivially so: a batch of 2 without accumulation trains differently
    assert max((one[k] - four[k]).abs().max().item() for k in four) > 1e-4


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    net = arch.build_network("metric3d_vit", {"size": "tiny"})
    x = torch.randn(2, 3, 56, 84)
    grads = []
    for enabled in (False, True):
        arch.set_activation_checkpointing(net, enabled)
        net.zero_grad()
        out = net(x)
        (out["predictions_list"][-1].mean() + out["normal_out_list"][1].square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert net.depth_model.encoder.activation_checkpointing
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:  # recomputation repeats the same float32 kernels: tolerance 1e-7
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="metric3d_vit only"):
        arch.set_activation_checkpointing(torch.nn.Linear(2, 2), True)


def test_bf16_tiny_vit_trains_with_float32_weights(tmp_path):
    state = _state(train(vit_tiny(tmp_path, name="bf16", precision="bf16")))
    fp32 = _state(train(vit_tiny(tmp_path, name="fp32")))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert any(not torch.equal(state[k], fp32[k]) for k in state)


# ---------------------------------------------------------------------- weights in and out
def test_official_weights_in_eval_mode_predict_what_the_runtime_predicts(tmp_path):
    from conftest import synthetic_weights
    from metricdepth.models.registry import load_model

    weights = synthetic_weights("vit_small")
    pth = tmp_path / "official.pth"
    torch.save({"model_state_dict": weights}, pth)
    config = vit_tiny(tmp_path, model_kwargs={"size": "small"}, init_from=str(pth))
    net = build_network(config)
    arch.load_initial_weights(net, config.arch, config.model_kwargs, config.init_from)
    runtime = load_model(pth)  # the official loader, as 'metricdepth predict x.pth' runs it
    x = torch.randn(1, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = net.eval()(x), runtime.net(x)
    for key in ("depth_c", "confidence", "normal"):
        assert torch.equal(ours[key], theirs[key])  # same code, same process: bit equal
    # a .safetensors of another architecture is refused, strictly
    from metricdepth.models.registry import save_model

    other = vit_tiny(tmp_path, name="other")
    tiny_net = build_network(other)
    from metricdepth.train.loop import model_spec

    save_model(tiny_net, model_spec(other), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match="init_from: .* holds metric3d_vit \\{'size': 'tiny'\\}"):
        arch.load_initial_weights(
            net, config.arch, config.model_kwargs, tmp_path / "tiny.safetensors"
        )


def test_trained_vit_is_a_self_describing_model_predict_takes(tmp_path):
    from metricdepth.camera import Camera
    from metricdepth.models.registry import load_model, read_spec
    from metricdepth.pipeline import predict

    config = vit_tiny(tmp_path, name="saved", steps=2)
    run_dir = train(config)
    spec = read_spec(run_dir / "model.safetensors")
    assert spec.arch == "metric3d_vit" and spec.arch_kwargs == {"size": "tiny"}
    assert spec.space.focal_px == 1000.0 and spec.space.input_hw == (56, 84)
    assert spec.outputs == ("confidence", "normal")
    model = load_model(run_dir / "model.safetensors")
    rank = json.loads((run_dir / "rank_0.json").read_text())
    assert parameter_digest(model.net) == rank["parameters_sha256"]
    image = np.random.default_rng(0).integers(0, 255, (70, 105, 3), dtype=np.uint8)
    result = predict(model, image, Camera(fx=90.0, fy=90.0, cx=52.0, cy=35.0, width=105, height=70))
    assert result.depth_m.shape == (70, 105) and np.isfinite(result.depth_m).all()
    assert (result.depth_m > 0).all() and result.normal.shape == (70, 105, 3)
    # init_from our own .safetensors continues from those weights (strict)
    cont = vit_tiny(tmp_path, name="cont", init_from=str(run_dir / "model.safetensors"))
    net = build_network(cont)
    arch.load_initial_weights(net, cont.arch, cont.model_kwargs, cont.init_from)
    assert parameter_digest(net) == rank["parameters_sha256"]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2] and all(np.isfinite(e["loss"]) for e in log)


def test_cli_train_takes_an_official_arch_config_and_rejects_a_bad_one(tmp_path):
    import subprocess
    import sys

    import yaml

    config = vit_tiny(tmp_path, name="cli", steps=1, checkpoint_every=1).to_dict()
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(config))
    bad.write_text(yaml.safe_dump(dict(config, losses={"vnl_typo": 1.0})))
    convnext = tmp_path / "convnext.yaml"
    convnext.write_text(
        yaml.safe_dump(
            dict(
                config,
                arch="metric3d_convnext",
                input_hw=[64, 96],
                infer_hw=[64, 96],
                loss_preset="vit.raft5.large.kitti",
                losses=None,
            )
        )
    )
    base = [sys.executable, "-m", "metricdepth", "train"]
    done = subprocess.run(
        [*base, str(good), "--out", str(tmp_path / "cli-runs")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cli-runs" / "cli" / "model.safetensors").is_file()
    for path, message in (
        (bad, "losses: unknown loss 'vnl_typo'; known: gru_sequence, vnl"),
        (convnext, "loss 'deno' (DeNoConsistencyLoss) needs the output 'normal_out_list'"),
    ):
        failed = subprocess.run(
            [*base, str(path), "--out", str(tmp_path / "bad-runs")], capture_output=True, text=True
        )
        assert failed.returncode == 2
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "bad-runs").exists()  # nothing written


def test_resume_with_accumulation_freeze_and_checkpointing_equals_an_uninterrupted_run(tmp_path):
    extra = {"steps": 3, "accumulate": 2, "freeze": ["depth_model.encoder.blocks"], "lr": 1e-3}
    # random losses too: their draws are a function of the seed and the step, not of the past
    extra["losses"] = {"gru_sequence": 1.0, "vnl": 0.5, "hdn": 0.5, "hdsn": 0.5, "deno": 0.01}
    whole = _state(train(vit_tiny(tmp_path, name="whole", **extra)))
    cut = vit_tiny(tmp_path, name="cut", checkpoint_every=1, activation_checkpointing=True, **extra)
    train(cut, stop_at_step=1)
    resumed = _state(train(cut))  # activation checkpointing may change on resume: same weights
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with pytest.raises(ValueError, match="'accumulate' changed"):
        train(vit_tiny(tmp_path, name="cut", checkpoint_every=1, **dict(extra, accumulate=1)))


def test_bf16_forward_and_float32_loss_outside_autocast(tmp_path, monkeypatch):
    from metricdepth.train import step

    seen = []
    original = step.compute_loss

    def spy(outputs, batch, config, **kwargs):
        seen.append(
            (
                torch.is_autocast_enabled("cpu"),
                {t.dtype for t in outputs["predictions_list"]} | {outputs["depth_c"].dtype},
            )
        )
        return original(outputs, batch, config, **kwargs)

    monkeypatch.setattr(step, "compute_loss", spy)
    config = vit_tiny(tmp_path, name="spy", precision="bf16", steps=1)
    dataset = build_dataset(config)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    torch.manual_seed(0)
    net = build_network(config)
    raw = []
    net.register_forward_hook(lambda m, i, out: raw.append(out["depth_c"].dtype))
    step.accumulate_gradients(net, [batch], config, torch.device("cpu"))
    assert raw == [torch.bfloat16]  # the network ran under bfloat16 autocast
    assert seen == [(False, {torch.float32})]  # the objective: float32, autocast off
    assert all(p.grad.dtype == torch.float32 for p in net.parameters() if p.grad is not None)


def test_convnext_tiny_trains_a_step_and_saves_a_loadable_model(tmp_path):
    from metricdepth.models.registry import load_model

    synth = dict(SYNTH, height=64, width=96, sizes=[[64, 96]])
    config = vit_tiny(
        tmp_path,
        name="convnext",
        arch="metric3d_convnext",
        model_kwargs={"size": "tiny"},
        input_hw=[64, 96],
        infer_hw=[64, 96],
        datasets=[{"kind": "synthetic", "seed": 3, "num_scenes": 4, "synth": synth}],
        steps=1,
        checkpoint_every=1,
        lr_encoder=1e-6,
        lr_decoder=1e-4,
    )
    # one-entry lists: the official GRU loss (L1 + confidence) on the single output (weight 1)
    assert config.losses == {"gru_sequence": 1.0}
    torch.manual_seed(config.seed)
    initial = build_network(config).state_dict()
    run_dir = train(config)
    model = load_model(run_dir / "model.safetensors")
    assert model.spec.arch == "metric3d_convnext" and model.spec.outputs == ("confidence",)
    trained = model.net.state_dict()
    changed = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert any(k.startswith("depth_model.encoder.") for k in changed)
    assert any(k.startswith("depth_model.decoder.") for k in changed)
