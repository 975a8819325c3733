"""The official Metric3D v2 loss weights and optimiser settings, as frozen presets.

One ``TrainingPreset`` per released config: the pre-training configs ``vit.raft5.small``,
``vit.raft5.large`` and ``vit.raft5.giant2``, the KITTI fine-tunes ``vit.raft5.large.kitti`` and
``vit.raft5.giant2.kitti`` and the NYU fine-tune ``vit.raft5.giant2.nyu`` (YvanYin/Metric3D
``eb5b6fa``, ``training/mono/configs/RAFTDecoder/``). Every value records the line of the
config file it comes from, so that a reader can check it upstream. The values are those of
``shared/lossfix/loss_config_table.json``, which ``tests/test_loss_presets.py`` compares them
with.

Loss names are the official class names; ``kwargs`` are the other constructor arguments the
config sets, with their official names (``loss_gamma``, ``random_num`` ...). The decoder branch
applies a loss to the final output; the ``gru`` branch to outputs 0..N-2 with the GRU weights.
"""

from __future__ import annotations

from dataclasses import dataclass

UPSTREAM = "YvanYin/Metric3D"
UPSTREAM_COMMIT = "eb5b6fac0dc155e4e52f576e304fbf11655ff339"
CONFIG_DIR = "training/mono/configs/RAFTDecoder"

#: Loss lists the pre-training configs inherit empty (auxiliary and pose branches).
BASE_LOSSES_FILE = "training/mono/configs/_base_/losses/all_losses.py"


@dataclass(frozen=True)
class LossTerm:
    """One entry of a config's loss list: ``weight`` is the official ``loss_weight``."""

    loss: str
    branch: str  # "decoder" or "gru"
    weight: float
    kwargs: tuple[tuple[str, object], ...]
    line: int

    def kwargs_dict(self) -> dict[str, object]:
        return dict(self.kwargs)


@dataclass(frozen=True)
class AdamWGroup:
    """AdamW settings of one parameter group (all on one config line)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float
    eps: float
    line: int


@dataclass(frozen=True)
class OptimizerPreset:
    """AdamW with an encoder and a decoder group.

    ``strict_match`` False (pre-training): a parameter joins the first group whose name is a
    substring of its name, so ``decoder.context_feature_encoder.*`` lands in the encoder group;
    True (fine-tunes): the name's second component must equal the group name.
    ``strict_match_line`` is None where the config leaves it at its default (False).
    """

    encoder: AdamWGroup
    decoder: AdamWGroup
    strict_match: bool
    strict_match_line: int | None
    line: int


@dataclass(frozen=True)
class PolySchedule:
    """Linear warm-up then poly decay, stepped per iteration (``lr_config``, ``runner``)."""

    warmup_iters: int
    warmup_ratio: float
    power: float
    min_lr: float
    max_iters: int
    line: int
    key_lines: tuple[tuple[str, int], ...]
    max_iters_line: int

    def line_of(self, key: str) -> int:
        return dict(self.key_lines)[key]


@dataclass(frozen=True)
class TrainingPreset:
    """The loss list and optimiser settings of one official config."""

    name: str
    role: str
    file: str
    sha256: str
    gru_iters: int
    gru_iters_line: int
    losses: tuple[LossTerm, ...]
    optimizer: OptimizerPreset
    schedule: PolySchedule
    batch_per_gpu: int
    batch_per_gpu_line: int

    @property
    def n_predictions(self) -> int:
        """Depth outputs in training: the initial prediction plus one per GRU iteration."""
        return self.gru_iters + 1

    def branch(self, branch: str) -> tuple[LossTerm, ...]:
        return tuple(term for term in self.losses if term.branch == branch)

    def weight(self, loss: str, branch: str = "decoder") -> float:
        """The weight of ``loss`` in ``branch``; 0.0 when the config does not use it."""
        return next((t.weight for t in self.losses if t.loss == loss and t.branch == branch), 0.0)


@dataclass(frozen=True)
class TrainingConstant:
    """A training fact that lives in code rather than in a config."""

    what: str
    value: object
    file: str
    line: int


# ------------------------------------------------------------------------------- values

_SKY = (("sample_ratio", 0.4), ("regress_value", 200), ("normal_regress", (0, 0, -1)))


def _pretrain_losses(normal_weight: float) -> tuple[LossTerm, ...]:
    return (
        LossTerm("VNLoss", "decoder", 1.0, (("sample_ratio", 0.2),), 40),
        LossTerm("GRUSequenceLoss", "decoder", 0.5, (("loss_gamma", 0.9), ("stereo_sup", 0.0)), 41),
        LossTerm("SkyRegularizationLoss", "decoder", 0.001, _SKY, 42),
        LossTerm("HDNRandomLoss", "decoder", 0.5, (("random_num", 10),), 43),
        LossTerm("HDSNRandomLoss", "decoder", 0.5, (("random_num", 20), ("batch_limit", 4)), 44),
        LossTerm("PWNPlanesLoss", "decoder", 1, (), 45),
        LossTerm("NormalBranchLoss", "decoder", normal_weight, (("loss_fn", "NLL_ours_GRU"),), 46),
        LossTerm(
            "DeNoConsistencyLoss",
            "decoder",
            0.01,
            (("loss_fn", "CEL"), ("scale", 2), ("depth_detach", True)),
            47,
        ),
        LossTerm("SkyRegularizationLoss", "gru", 0.001, _SKY, 50),
    )


_KITTI_LOSSES = (
    LossTerm("VNLoss", "decoder", 0.1, (("sample_ratio", 0.2),), 21),
    LossTerm("GRUSequenceLoss", "decoder", 1.0, (("loss_gamma", 0.9), ("stereo_sup", 0)), 22),
    LossTerm("DeNoConsistencyLoss", "decoder", 0.001, (("loss_fn", "CEL"), ("scale", 2)), 23),
)

_NYU_LOSSES = (
    LossTerm("VNLoss", "decoder", 1.0, (("sample_ratio", 0.2),), 21),
    LossTerm("GRUSequenceLoss", "decoder", 1.0, (("loss_gamma", 0.9), ("stereo_sup", 0)), 22),
    LossTerm("NormalBranchLoss", "decoder", 1.5, (("loss_fn", "NLL_ours_GRU"),), 23),
    LossTerm("DeNoConsistencyLoss", "decoder", 0.001, (("loss_fn", "CEL"), ("scale", 2)), 24),
    LossTerm("HDNRandomLoss", "decoder", 0.5, (("random_num", 10),), 25),
    LossTerm("HDSNRandomLoss", "decoder", 0.5, (("random_num", 20), ("batch_limit", 4)), 26),
    LossTerm("PWNPlanesLoss", "decoder", 1, (), 27),
)

_BETAS = (0.9, 0.999)


def _pretrain_optimizer(encoder_lr: float) -> OptimizerPreset:
    return OptimizerPreset(
        encoder=AdamWGroup(encoder_lr, _BETAS, 1e-3, 1e-6, 128),
        decoder=AdamWGroup(1e-4, _BETAS, 1e-2, 1e-6, 129),
        strict_match=False,
        strict_match_line=None,
        line=125,
    )


def _finetune_optimizer(first: int) -> OptimizerPreset:
    # The fine-tune optimizer block: dict at `first`, type, encoder, decoder, strict_match.
    return OptimizerPreset(
        encoder=AdamWGroup(5e-7, _BETAS, 0, 1e-10, first + 2),
        decoder=AdamWGroup(1e-5, _BETAS, 0, 1e-10, first + 3),
        strict_match=True,
        strict_match_line=first + 4,
        line=first,
    )


def _schedule(warmup: int, min_lr: float, max_iters: int, first: int, keys, max_line: int):
    names = ("policy", "warmup", "warmup_iters", "warmup_ratio", "power", "min_lr", "by_epoch")
    return PolySchedule(
        warmup_iters=warmup,
        warmup_ratio=1e-6,
        power=0.9,
        min_lr=min_lr,
        max_iters=max_iters,
        line=first,
        key_lines=tuple(zip(names, keys, strict=True)),
        max_iters_line=max_line,
    )


_PRE_KEYS = (132, 133, 134, 135, 136, 136, 136)
_G2_KEYS = (133, 134, 135, 136, 137, 137, 137)
_KITTI_KEYS = (75, 76, 77, 78, 79, 79, 79)
_NYU_KEYS = (79, 80, 81, 82, 83, 83, 83)

PRESETS: dict[str, TrainingPreset] = {
    p.name: p
    for p in (
        TrainingPreset(
            "vit.raft5.small",
            "pre-training ViT-S",
            f"{CONFIG_DIR}/vit.raft5.small.py",
            "79cb4d844f08ad71be66a2499a308b4eb2f8ef0c68f3aee22f36e8a55eb36b59",
            4,
            31,
            _pretrain_losses(1.0),
            _pretrain_optimizer(1e-5),
            _schedule(500, 1e-6, 800010, 132, _PRE_KEYS, 122),
            6,
            138,
        ),
        TrainingPreset(
            "vit.raft5.large",
            "pre-training ViT-L",
            f"{CONFIG_DIR}/vit.raft5.large.py",
            "f79213783d1170c143a2cbf447ca8c9b8b4e5a1fe2432fed056252cdb34bf388",
            8,
            31,
            _pretrain_losses(1.0),
            _pretrain_optimizer(1e-5),
            _schedule(500, 1e-6, 800010, 132, _PRE_KEYS, 122),
            4,
            138,
        ),
        TrainingPreset(
            "vit.raft5.giant2",
            "pre-training ViT-giant2",
            f"{CONFIG_DIR}/vit.raft5.giant2.py",
            "5d7ed548426cee2d8b57c82402a03264003737cf6e7f89b49fead8fc809d5a3f",
            8,
            31,
            _pretrain_losses(1.5),
            _pretrain_optimizer(8e-6),
            _schedule(1000, 1e-6, 800010, 133, _G2_KEYS, 122),
            3,
            139,
        ),
        TrainingPreset(
            "vit.raft5.large.kitti",
            "KITTI fine-tune ViT-L",
            f"{CONFIG_DIR}/vit.raft5.large.kitti.py",
            "f07bde18860d4ed7e2c309a932aaa36a46ce9da146979e478b62b6fb3a16b9ff",
            8,
            12,
            _KITTI_LOSSES,
            _finetune_optimizer(68),
            _schedule(20, 1e-8, 20010, 75, _KITTI_KEYS, 65),
            2,
            82,
        ),
        TrainingPreset(
            "vit.raft5.giant2.kitti",
            "KITTI fine-tune ViT-giant2",
            f"{CONFIG_DIR}/vit.raft5.giant2.kitti.py",
            "91fe4cc10aa86df22a932406c9b0d9107be26102ab3174d37607f4e928987f16",
            8,
            12,
            _KITTI_LOSSES,
            _finetune_optimizer(68),
            _schedule(20, 1e-8, 20010, 75, _KITTI_KEYS, 65),
            2,
            82,
        ),
        TrainingPreset(
            "vit.raft5.giant2.nyu",
            "NYU fine-tune ViT-giant2",
            f"{CONFIG_DIR}/vit.raft5.giant2.nyu.py",
            "e2b2c7afc2a646e84537440159c97f07b5032638ea936457c7a7bc53de955812",
            8,
            12,
            _NYU_LOSSES,
            _finetune_optimizer(72),
            _schedule(20, 1e-8, 20010, 79, _NYU_KEYS, 69),
            2,
            86,
        ),
    )
}

#: Training facts of the official code used by every config.
CONSTANTS: tuple[TrainingConstant, ...] = (
    TrainingConstant(
        "bf16 autocast of network and losses", "bfloat16", "training/mono/utils/do_train.py", 326
    ),
    TrainingConstant("gradient-norm clip", 2.5, "training/mono/utils/do_train.py", 342),
    TrainingConstant("GradScaler", None, "training/mono/utils/do_train.py", 102),
    TrainingConstant("seed (every rank)", 88, "training/mono/tools/train.py", 52),
)


def preset(name: str) -> TrainingPreset:
    """The preset of an official config, e.g. ``vit.raft5.large.kitti`` (``.py`` optional)."""
    key = name.removesuffix(".py")
    if key not in PRESETS:
        raise KeyError(f"no preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]
