"""Measurement between two pixels of a metric depth map with a known camera."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from metricdepth.camera import Camera
from metricdepth.canonical import CanonicalRecord
from metricdepth.measure import Measurement, measure, measure_report, parse_points
from metricdepth.pipeline import Prediction

CAMERA = Camera(500.0, 500.0, 319.5, 239.5, 640, 480)


def make_prediction(depth_m: np.ndarray, camera: Camera = CAMERA) -> Prediction:
    record = CanonicalRecord(
        camera=camera,
        input_hw=(camera.height, camera.width),
        scale=1.0,
        resized_hw=(camera.height, camera.width),
        offset=(0, 0),
        focal_px=camera.fx,
        focal_mode="mean",
        canonical_focal_px=1000.0,
    )
    return Prediction(
        depth_m=depth_m.astype(np.float32),
        camera=camera,
        camera_source="given",
        record=record,
        model="synthetic",
    )


def flat(depth: float = 1.0) -> np.ndarray:
    return np.full((CAMERA.height, CAMERA.width), depth, dtype=np.float32)


def test_seed_example_quarter_metre_at_one_metre():
    # A 0.25 m object at 1 m spans 0.25 * 500 / 1 = 125 pixels with f = 500 px.
    m = measure(make_prediction(flat(1.0)), (250, 240), (375, 240))
    assert isinstance(m, Measurement)
    assert m.distance_m == pytest.approx(0.25, abs=1e-9)
    assert m.depth1_m == m.depth2_m == 1.0
    assert m.point1_m == pytest.approx(((250 - 319.5) / 500, 0.5 / 500, 1.0))
    assert m.point2_m == pytest.approx(((375 - 319.5) / 500, 0.5 / 500, 1.0))
    assert m.pixels == ((250, 240), (375, 240)) and m.window == 2
    json.dumps(m.to_dict())


def test_tilted_plane_matches_analytic_points():
    # Plane z = 2 + 0.002 * v (tilted about the x axis): exact back-projection, window 0.
    v = np.arange(CAMERA.height, dtype=np.float64)[:, None]
    depth = np.broadcast_to(2.0 + 0.002 * v, (CAMERA.height, CAMERA.width)).copy()
    prediction = make_prediction(depth)
    (u1, v1), (u2, v2) = (100, 50), (600, 400)

    def point(u, v):
        z = float(np.float32(2.0 + 0.002 * v))
        return ((u - CAMERA.cx) * z / CAMERA.fx, (v - CAMERA.cy) * z / CAMERA.fy, z)

    m = measure(prediction, (u1, v1), (u2, v2), window=0)
    expected = math.dist(point(u1, v1), point(u2, v2))
    assert m.distance_m == pytest.approx(expected, rel=1e-9)
    assert m.point1_m == pytest.approx(point(u1, v1), rel=1e-9)
    assert m.depth2_m == pytest.approx(2.8, abs=1e-6)


def test_median_window_resists_noise():
    rng = np.random.default_rng(0)
    depth = flat(1.0)
    p1, p2 = (250, 240), (375, 240)
    for u, v in (p1, p2):  # corrupt the pixel itself and 9 of the 24 neighbours
        patch = [(u + du, v + dv) for du in range(-2, 3) for dv in range(-2, 3)]
        for index in rng.choice(len(patch), size=10, replace=False):
            pu, pv = patch[index]
            depth[pv, pu] = rng.choice([0.0, np.nan, np.inf, 7.5, 0.2])
        depth[v, u] = 9.0
    prediction = make_prediction(depth)
    robust = measure(prediction, p1, p2, window=2)
    assert robust.distance_m == pytest.approx(0.25, abs=1e-9)
    assert robust.depth1_m == 1.0 and robust.depth2_m == 1.0
    raw = measure(prediction, p1, p2, window=0)
    assert raw.depth1_m == 9.0 and abs(raw.distance_m - 0.25) > 1.0


def test_invalid_pixel_with_valid_neighbours_and_empty_window():
    depth = flat(1.0)
    depth[240, 250] = 0.0
    m = measure(make_prediction(depth), (250, 240), (375, 240), window=1)
    assert m.depth1_m == 1.0
    depth[235:246, 245:256] = np.nan
    with pytest.raises(ValueError, match="no valid depth"):
        measure(make_prediction(depth), (250, 240), (375, 240), window=2)


@pytest.mark.parametrize(
    ("p1", "p2", "name"),
    [
        ((640, 10), (10, 10), "p1"),
        ((10, 10), (10, 480), "p2"),
        ((-1, 10), (10, 10), "p1"),
        ((10.5, 10), (10, 10), "p1"),
        ((10, 10), "ab", "p2"),
    ],
)
def test_bad_pixels(p1, p2, name):
    with pytest.raises(ValueError, match=name):
        measure(make_prediction(flat()), p1, p2)


def test_bad_window_and_prediction():
    with pytest.raises(ValueError, match="window"):
        measure(make_prediction(flat()), (1, 1), (2, 2), window=-1)
    with pytest.raises(TypeError, match="depth_m and camera"):
        measure(object(), (1, 1), (2, 2))


def test_parse_points():
    assert parse_points("10,20,30,40") == [((10, 20), (30, 40))]
    assert parse_points(["10,20,30,40", "1,2,3,4"]) == [((10, 20), (30, 40)), ((1, 2), (3, 4))]
    assert parse_points("10, 20, 30, 40; 5,6,7,8") == [((10, 20), (30, 40)), ((5, 6), (7, 8))]
    assert parse_points("0,0,639,479", size=(640, 480)) == [((0, 0), (639, 479))]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1,2,3", "4 comma-separated integers"),
        ("a,b,c,d", "4 comma-separated integers"),
        ("1.5,2,3,4", "4 comma-separated integers"),
        ("1,2,3,4,5", "4 comma-separated integers"),
        ("", "at least one"),
        ([], "at least one"),
        ("0,0,640,10", r"pixel \(640, 10\) is outside the 640x480 image"),
        ("-1,0,10,10", r"pixel \(-1, 0\) is outside"),
    ],
)
def test_parse_points_errors(text, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_points(text, size=(640, 480))
    assert "\n" not in str(info.value)


def test_measure_report():
    prediction = make_prediction(flat(1.0))
    pairs = parse_points("250,240,375,240 319,239,319,364", size=CAMERA.size)
    measurements = [measure(prediction, p1, p2) for p1, p2 in pairs]
    text = measure_report(
        measurements, camera=prediction.camera, camera_source=prediction.camera_source
    )
    lines = text.splitlines()
    assert lines[0].startswith("camera source given: fx=500.00")
    assert "1: (250, 240) -> (375, 240): 0.250 m" in text
    assert "2: (319, 239) -> (319, 364): 0.250 m" in text
    assert "depths 1.000 m and 1.000 m" in text and "5x5 median" in text
    assert "point 1 (x, y, z) = (-0.139, +0.001, +1.000) m" in text
    assert measure_report([]) == "no measurements"
