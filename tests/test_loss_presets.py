"""The loss / optimiser presets equal the official config table of ``../shared/lossfix``."""

from __future__ import annotations

import json

import pytest

from lossfix_util import lossfix_dir, missing
from metricdepth.train.loss_presets import CONSTANTS, PRESETS, UPSTREAM_COMMIT, preset


@pytest.fixture(scope="module")
def table() -> dict:
    path = lossfix_dir() / "loss_config_table.json"
    missing(path, "loss config table")
    return json.loads(path.read_text())


def _plain(value):
    """JSON-comparable form of preset values (tuples -> lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def test_every_config_of_the_table_has_a_preset(table):
    assert table["upstream_commit"] == UPSTREAM_COMMIT
    assert sorted(n.removesuffix(".py") for n in table["configs"]) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_equals_table(table, name):
    p = PRESETS[name]
    c = table["configs"][f"{name}.py"]
    assert (p.file, p.role, p.sha256) == (c["file"], c["role"], c["sha256"])
    assert (p.gru_iters, p.gru_iters_line) == (
        c["decode_head_iters"]["value"],
        c["decode_head_iters"]["line"],
    )
    assert p.n_predictions == c["decode_head_iters"]["n_depth_predictions_in_training"]
    assert (p.batch_per_gpu, p.batch_per_gpu_line) == (
        c["batchsize_per_gpu"]["value"],
        c["batchsize_per_gpu"]["line"],
    )

    # Losses: every branch, in order, with weight, constructor kwargs and line.
    want = []
    for branch, key in (("decoder", "decoder_losses"), ("gru", "gru_losses")):
        for entry in c["losses"].get(key, []):
            kwargs = {k: v for k, v in entry["kwargs"].items() if k != "loss_weight"}
            want.append((entry["type"], branch, entry["loss_weight"], kwargs, entry["line"]))
    got = [
        (t.loss, t.branch, t.weight, {k: _plain(v) for k, v in t.kwargs}, t.line) for t in p.losses
    ]
    assert got == want
    assert c["losses"]["auxi_losses"] == [] and c["losses"]["pose_losses"] == []

    # Optimiser groups.
    opt = c["optimizer"]
    assert opt["value"]["type"] == "AdamW" and p.optimizer.line == opt["line"]
    for group in ("encoder", "decoder"):
        g = getattr(p.optimizer, group)
        v = opt["value"][group]
        assert (g.lr, list(g.betas), g.weight_decay, g.eps) == (
            v["lr"],
            v["betas"],
            v["weight_decay"],
            v["eps"],
        )
        assert g.line == opt["keys"][group]["line"]
    assert p.optimizer.strict_match == opt["value"].get("strict_match", False)
    assert p.optimizer.strict_match_line == opt["keys"].get("strict_match")

    # Schedule.
    lr = c["lr_config"]
    assert (lr["value"]["policy"], lr["value"]["warmup"], lr["value"]["by_epoch"]) == (
        "poly",
        "linear",
        False,
    )
    s = p.schedule
    assert (s.warmup_iters, s.warmup_ratio, s.power, s.min_lr) == (
        lr["value"]["warmup_iters"],
        lr["value"]["warmup_ratio"],
        lr["value"]["power"],
        lr["value"]["min_lr"],
    )
    assert s.line == lr["line"] and dict(s.key_lines) == lr["keys"]
    assert (s.max_iters, s.max_iters_line) == (
        c["runner"]["value"]["max_iters"],
        c["runner"]["line"],
    )


def test_constants_match_table(table):
    by_line = {(e["file"], e["line"]): e["what"] for e in table["code_constants"]}
    for const in CONSTANTS:
        what = by_line[(const.file, const.line)]
        if const.value is not None:
            assert str(const.value) in what, (const, what)


def test_preset_lookup_and_weights():
    assert preset("vit.raft5.large.kitti.py") is PRESETS["vit.raft5.large.kitti"]
    with pytest.raises(KeyError, match="known"):
        preset("vit.raft5.tiny")
    small, g2, kitti = (
        preset("vit.raft5.small"),
        preset("vit.raft5.giant2"),
        preset("vit.raft5.large.kitti"),
    )
    assert g2.weight("NormalBranchLoss") == 1.5 and small.weight("NormalBranchLoss") == 1.0
    assert kitti.weight("VNLoss") == 0.1 and kitti.weight("HDNRandomLoss") == 0.0
    assert [t.loss for t in small.branch("gru")] == ["SkyRegularizationLoss"]
