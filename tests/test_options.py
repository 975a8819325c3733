"""The option groups (``batch.BatchOptions``, ``predictor.PrepareOptions``,
``data.dataset.Augmentation``) are frozen and checked when made, with the messages the runner
and the training record give."""

from __future__ import annotations

import dataclasses

import pytest

from metricdepth.batch import BatchOptions
from metricdepth.cameras import CameraOptions
from metricdepth.data.dataset import Augmentation
from metricdepth.predictor import PrepareOptions


@pytest.mark.parametrize(
    ("group", "field", "value"),
    [
        (BatchOptions(), "workers", 3),
        (PrepareOptions(), "focal_mode", "fx"),
        (Augmentation(), "flip_prob", 0.5),
    ],
)
def test_groups_are_frozen(group, field, value):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(group, field, value)


def test_batch_options_are_checked():
    assert BatchOptions(workers=2, shard=("1", 3)).shard == (1, 3)
    with pytest.raises(ValueError, match=r"^workers must be a whole number >= 0, got -1$"):
        BatchOptions(workers=-1)
    with pytest.raises(ValueError, match=r"^workers must be a whole number >= 0, got True$"):
        BatchOptions(workers=True)
    with pytest.raises(ValueError, match=r"^shard must be \(i, n\) with 0 <= i < n, got \(3, 3\)$"):
        BatchOptions(shard=(3, 3))
    with pytest.raises(ValueError, match=r"^resume must be True or False, got 'yes'$"):
        BatchOptions(resume="yes")


def test_prepare_options_are_checked():
    options = PrepareOptions(CameraOptions(focal_px=500), "fx", alpha=1)
    assert options.camera.focal_px == 500.0 and options.alpha == 1.0
    with pytest.raises(ValueError, match=r"^focal mode must be one of mean, fx, got 'fy'$"):
        PrepareOptions(focal_mode="fy")
    with pytest.raises(ValueError, match=r"^alpha must be in \[0, 1\], got 1.5$"):
        PrepareOptions(alpha=1.5)
    with pytest.raises(ValueError, match="not both"):
        PrepareOptions(CameraOptions((500.0, 500.0, 320.0, 240.0), 500.0))
    with pytest.raises(TypeError, match="camera must be a CameraOptions, got tuple"):
        PrepareOptions((500.0, 500.0, 320.0, 240.0))


def test_augmentation_is_checked():
    assert Augmentation(resize_range=[1, 2], flip_prob=1).resize_range == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"^resize_range must be 0 < low <= high, got \(2, 1\)$"):
        Augmentation(resize_range=(2, 1))
    with pytest.raises(ValueError, match=r"^flip_prob must be in \[0, 1\], got 1.5$"):
        Augmentation(flip_prob=1.5)
    with pytest.raises(ValueError, match=r"^crop must be 'rand' or 'center', got 'middle'$"):
        Augmentation(crop="middle")
    with pytest.raises(ValueError, match=r"^resize_base must be 'none' or 'fit', got 'x'$"):
        Augmentation(resize_base="x")
