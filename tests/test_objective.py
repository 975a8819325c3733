"""The training objective with the official loss set: a tiny-ViT training step with the whole
pre-training list, and small_unet's own losses unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dense_frames import TINY_VIT_SYNTH, tiny_vit_config
from metricdepth.train import step
from metricdepth.train.config import config_from_dict
from metricdepth.train.loop import build_dataset, build_network
from metricdepth.train.losses import l1_log_loss, silog_loss
from metricdepth.train.objective import compute_loss, loss_generator

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread

SYNTH = TINY_VIT_SYNTH


def _config(tmp_path: Path, **overrides):
    raw = tiny_vit_config(
        "objective", seed=5, scene_seed=1, num_scenes=8, out_dir=str(tmp_path / "runs"),
        resize_range=[0.8, 1.2],
    )  # fmt: skip
    raw.update(overrides)
    return config_from_dict(raw, base_dir=tmp_path)


def _batch_with_sky_normals_and_planes(config):
    """Two synthetic samples (sky labelled 142); normals on every labelled pixel; the second
    sample named Taskonomy with two plane ids in ``sem_mask`` (what PWN reads)."""
    dataset = build_dataset(config)
    sky = next(i for i in range(16) if (dataset[i]["sem_mask"] == 142).any())
    batch = torch.utils.data.default_collate([dataset[sky], dataset[sky + 1]])
    mask = batch["mask"]
    tilt = torch.tensor([0.0, -0.6, -0.8])[None, :, None, None]
    batch["normal"] = torch.where(mask, tilt, torch.zeros(()))
    width = batch["sem_mask"].shape[-1]
    planes = torch.ones_like(batch["sem_mask"][1])
    planes[..., width // 2 :] = 2
    batch["sem_mask"][1] = planes
    batch["dataset"] = ["synthetic", "Taskonomy"]
    return batch


def test_tiny_vit_step_with_the_whole_pretraining_list(tmp_path):
    from metricdepth.train.loss_presets import preset
    from metricdepth.train.loss_set import config_from_terms

    losses = config_from_terms(preset("vit.raft5.small").losses)
    # PWN needs planes of 0.6 x 3 x sample_groups pixels: 900 of the 56x84 canvas, not 9000
    losses["pwn_planes"]["sample_groups"] = 500
    config = _config(tmp_path, losses=losses)
    assert len(config.losses) == 9
    batch = _batch_with_sky_normals_and_planes(config)
    torch.manual_seed(0)
    net = build_network(config)

    def lift_confidence(module, inputs, out):  # DeNo uses confidence > 0.5 only
        return dict(out, confidence_list=[c + 1.0 for c in out["confidence_list"]])

    net.register_forward_hook(lift_confidence)
    terms = step.accumulate_gradients(net, [batch], config, torch.device("cpu"), step=0)
    decoder = [
        "VNLoss", "GRUSequenceLoss", "SkyRegularizationLoss", "HDNRandomLoss", "HDSNRandomLoss",
        "PWNPlanesLoss", "NormalBranchLoss", "DeNoConsistencyLoss",
    ]  # fmt: skip
    gru = [f"gru_{i}_SkyRegularizationLoss" for i in range(net.cfg.head.iters)]
    assert list(terms) == [f"decode_{n}" for n in decoder] + gru + ["total"]
    for key, value in terms.items():
        assert torch.isfinite(value) and value > 0, key  # every term is at work
    total = sum(v for k, v in terms.items() if k != "total")
    assert terms["total"].item() == pytest.approx(total.item(), rel=1e-6)
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    for part in ("flow_head.conv2d", "flow_head.conv2n", "depth_model.encoder.blocks"):
        assert any(part in n and g.abs().sum() > 0 for n, g in grads.items()), part
    assert all(torch.isfinite(g).all() for g in grads.values())
    # the draws are the step's: the same step reproduces the terms, another step does not
    net.zero_grad()
    again = step.accumulate_gradients(net, [batch], config, torch.device("cpu"), step=0)
    other = step.accumulate_gradients(net, [batch], config, torch.device("cpu"), step=1)
    assert all(torch.equal(again[k], terms[k]) for k in terms)
    assert other["decode_VNLoss"] != terms["decode_VNLoss"]
    assert torch.equal(other["decode_GRUSequenceLoss"], terms["decode_GRUSequenceLoss"])


def test_loss_generator_is_a_pure_function_of_seed_step_rank_and_micro_batch():
    draws = {
        key: loss_generator(*key).integers(0, 2**31, 4).tolist()
        for key in [(0, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (1, 0, 0, 0)]
    }
    assert len({tuple(v) for v in draws.values()}) == len(draws)
    assert loss_generator(0, 1).integers(0, 2**31, 4).tolist() == draws[(0, 1, 0, 0)]


def test_small_unet_keeps_its_own_l1_log_and_silog(tmp_path):
    config = _config(
        tmp_path,
        arch="small_unet",
        model_kwargs={"widths": [8, 16, 32]},
        input_hw=[32, 48],
        datasets=[{"kind": "synthetic", "seed": 1, "num_scenes": 4, "synth": SYNTH}],
        losses={"l1_log": 0.5, "silog": 2.0},
    )
    assert config.loss_l1_log == 0.5 and config.loss_silog == 2.0
    dataset = build_dataset(config)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    torch.manual_seed(0)
    net = build_network(config)
    out = net(batch["image"])
    official = step.official_batch(batch, torch.device("cpu"))
    terms = compute_loss(out, official, config)
    assert list(terms) == ["l1_log", "silog", "total"]
    l1 = l1_log_loss(out["log_depth_c"], official["target"], official["mask"])
    silog = silog_loss(out["log_depth_c"], official["target"], official["mask"], 0.85)
    assert torch.equal(terms["l1_log"], 0.5 * l1) and torch.equal(terms["silog"], 2.0 * silog)
    # the total is the weighted sum, up to float32 rounding (not tied to a summation order)
    expected = 0.5 * float(l1.detach()) + 2.0 * float(silog.detach())
    assert float(terms["total"].detach()) == pytest.approx(expected, rel=1e-6, abs=0)
