"""The Ray Data executor (``metricdepth.ray_engine``) on a local Ray instance with 2 CPUs.

One Ray instance serves the module (its start-up takes seconds); faults are injected in its
worker processes by ``ray_faults`` (installed as Ray's worker setup hook), steered by files.
The reference is the local runner (``batch.run_batch``) on the same images with the bundled
model, with one torch thread as Ray's workers have.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PATH_RTOL, assert_outputs_match, torch_threads, tree
from metricdepth.batch import BatchOptions, run_batch
from metricdepth.data.inputs import InputItem, collect_inputs
from metricdepth.pipeline import load_model

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from metricdepth.ray_engine import RayOptions, predict_dataset, run_ray  # noqa: E402
from ray_faults import FAULTS  # noqa: E402

TESTS = Path(__file__).resolve().parent
SAVE = {"depth", "png16"}
ANNOTATED = (60.0, 62.0, 31.5, 20.0)  # the annotation camera of one image


def make_images(folder: Path) -> list[InputItem]:
    """Five images: random PNGs of a few sizes (one in a sub-folder), a JPEG whose EXIF gives
    its focal, and one with an annotation camera."""
    from PIL import Image

    rng = np.random.default_rng(7)
    for k, (h, w) in enumerate([(40, 60), (48, 64), (36, 50)]):
        path = folder / ("sub" if k == 1 else "") / f"img{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26  # FocalLengthIn35mmFilm, mm
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "phone.jpg", exif=exif, quality=95)
    items = collect_inputs([folder])
    annotated = folder / "annotated.png"
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(annotated)
    return [*items, InputItem(annotated, "annotated", ANNOTATED)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray instance (2 CPUs) whose workers run ``ray_faults.install``; yields
    ``(address, faults folder)``."""
    faults = tmp_path_factory.mktemp("faults")
    before = os.environ.get("PYTHONPATH")
    # the worker processes find ray_faults (and this checkout's metricdepth) on their path
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), *sys.path])
    try:
        context = ray.init(
            num_cpus=2,
            include_dashboard=False,
            runtime_env={
                "env_vars": {FAULTS: str(faults)},
                "worker_process_setup_hook": "ray_faults.install",
            },
        )
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield context.address_info["address"], faults
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[InputItem]:
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def local(tmp_path_factory, images) -> dict[str, bytes]:
    """The local runner's files for ``images`` (one torch thread), records without timings."""
    out = tmp_path_factory.mktemp("local")
    with torch_threads(1):
        summary = run_batch(load_model(), images, out, SAVE, options=BatchOptions(progress=False))
    assert summary.done == len(images)
    return tree(out)


def writes(faults: Path) -> list[str]:
    """The keys written since the log was last cleared, in order."""
    log = faults / "writes.log"
    return log.read_text().split() if log.exists() else []


def clear(faults: Path) -> None:
    for name in ("writes.log", "kill-once", "killed", "slow"):
        (faults / name).unlink(missing_ok=True)


def test_ray_writes_what_the_local_runner_writes(cluster, images, local, tmp_path):
    _, faults = cluster
    clear(faults)
    out = tmp_path / "ray"
    summary = run_ray(images, out, SAVE, RayOptions(num_workers=1))
    assert (summary.done, summary.skipped, summary.failed) == (len(images), 0, [])
    got = tree(out)
    assert_outputs_match(got, local)
    assert got == local  # one torch thread in both: the same bytes, records but timings
    sources = {k: json.loads(got[f"{k}.json"])["camera_source"] for k in ("phone", "annotated")}
    assert sources == {"phone": "exif", "annotated": "annotation"}  # EXIF survived the bytes
    record = json.loads((out / "img0.json").read_text())
    assert set(record["timings_ms"]) == {"pre", "forward", "post"}
    assert sorted(writes(faults)) == sorted(item.stem for item in images)


def test_predict_dataset_in_memory_equals_predict(cluster, images):
    import metricdepth

    model = metricdepth.load_model()
    rows = [
        {
            "key": item.stem,
            "image": Path(item.image).read_bytes(),
            "intrinsics": list(item.intrinsics or []),
        }
        for item in images
    ]
    rows.append({"key": "junk", "image": b"not an image", "intrinsics": []})
    options = RayOptions(batch_size=3)  # three images a forward pass: stacked, one output each
    results = predict_dataset(ray.data.from_items(rows), options).take_all()
    got = {row["key"]: row for row in results}
    assert len(results) == len(got)
    assert sorted(got) == sorted([item.stem for item in images] + ["junk"])
    assert "not an image Pillow can read" in got["junk"]["error"]
    for item in images:
        row = got[item.stem]
        assert row["error"] is None
        if item.intrinsics is None:
            want = metricdepth.predict(model, item.image)  # EXIF focal, else the default
        else:
            want = metricdepth.predict(
                model, item.image, item.intrinsics, camera_source="annotation"
            )
        np.testing.assert_allclose(row["depth_m"], want.depth_m, rtol=PATH_RTOL, atol=0)
        record = json.loads(row["record"])
        assert record["camera_source"] == want.camera_source == row["camera_source"]
        assert record["camera"] == want.camera.to_dict()
        assert record["canonical"] == want.record.to_dict()
        assert record["weights_sha256"] == model.weights_sha256
        assert record["input"] == item.stem  # no path given: the key
    assert got["phone"]["camera_source"] == "exif"


def test_a_killed_worker_loses_and_duplicates_nothing(cluster, images, local, tmp_path):
    """The forward actor dies (``os._exit``) on one image; Ray restarts it and retries the
    task: every image is written exactly once, with the local runner's outputs."""
    _, faults = cluster
    clear(faults)
    (faults / "kill-once").write_text("img2")
    out = tmp_path / "ray"
    summary = run_ray(images, out, SAVE, RayOptions(num_workers=1))
    assert (faults / "killed").exists()  # the actor did die
    assert (summary.done, summary.failed) == (len(images), [])
    assert sorted(writes(faults)) == sorted(item.stem for item in images)  # each once
    assert tree(out) == local


DRIVER = textwrap.dedent(
    """
    import sys, ray
    ray.init(address=sys.argv[1], runtime_env={{
        "env_vars": {{{faults!r}: sys.argv[2]}}, "worker_process_setup_hook": "ray_faults.install",
    }})
    from metricdepth.cli import main
    sys.argv = ["metricdepth", "predict", *sys.argv[3:]]
    main()
    """
)


@pytest.mark.slow  # 60-80 s on 2 busy cores: a second Ray driver, a kill, a resumed run
def test_resume_after_a_killed_run_does_every_image_once(cluster, images, tmp_path):
    """A CLI run (another driver on the same Ray instance) is killed (SIGKILL) after some
    images are written; ``--resume`` does the rest, each image once, no partial file."""
    address, faults = cluster
    clear(faults)
    (faults / "slow").write_text("0.5")  # a second per image: the kill lands mid-run
    folder = images[0].image.parent  # the images of a folder (not the annotated one)
    items = collect_inputs([folder])
    reference = tmp_path / "local"
    with torch_threads(1):
        run_batch(load_model(), items, reference, SAVE, options=BatchOptions(progress=False))
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(faults=FAULTS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    args = [str(folder), "--engine", "ray", "--out", str(out), "--save", "depth,png16"]
    with open(tmp_path / "driver.err", "w") as err:
        child = subprocess.Popen(
            [sys.executable, str(script), address, str(faults), *args],
            stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(out.rglob("*.json"))) < 2 and child.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "driver.err").read_text()
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    time.sleep(3)  # Ray ends the dead driver's workers
    (faults / "slow").unlink()
    first = writes(faults)
    finished = {p.relative_to(out).as_posix()[: -len(".json")] for p in out.rglob("*.json")}
    assert 0 < len(finished) < len(items), (tmp_path / "driver.err").read_text()
    assert finished <= set(first)
    for path in out.rglob("*.npy"):  # every file under its final name is whole
        if not path.name.startswith("."):
            assert np.load(path).ndim == 2
    (faults / "writes.log").unlink()

    resumed = run_cli("predict", *args, "--resume")  # in this process, on the same Ray
    assert resumed[0] == 0, resumed[1]
    line = resumed[2].strip().splitlines()[-1]
    done = len(items) - len(finished)
    assert line.startswith(f"{done} done, {len(finished)} skipped as finished, 0 failed of ")
    assert sorted(writes(faults)) == sorted({i.stem for i in items} - finished)  # each once
    assert not [p.name for p in out.rglob(".*")]  # no temporaries left
    assert tree(out) == tree(reference)


def test_fsspec_url_output_is_the_same_and_resumes(cluster, images, local, tmp_path):
    """Outputs to an fsspec URL: the local runner's files; resume skips them; a bad image
    is one ``failed`` line with ``keep_going`` and a ValueError naming it without."""
    _, faults = cluster
    clear(faults)
    url = f"file://{tmp_path / 'remote'}"
    summary = run_ray(images[:2], url, SAVE, RayOptions())
    assert summary.done == 2
    got = tree(tmp_path / "remote")
    want = {k: v for k, v in local.items() if k.split(".")[0] in {i.stem for i in images[:2]}}
    assert got == want
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    items = [*images[:3], InputItem(bad, "bad")]
    again = run_ray(items, url, SAVE, RayOptions(), resume=True, keep_going=True)
    assert (again.done, again.skipped) == (1, 2)
    assert again.failed == [f"{bad}: not an image Pillow can read (or an empty file)"]
    assert not (tmp_path / "remote" / "bad.json").exists()
    with pytest.raises(ValueError, match=r"bad.png: not an image .*\(--keep-going skips it\)"):
        run_ray(items, url, SAVE, RayOptions(), resume=True)


def test_ply_and_vis_are_the_local_runners(cluster, images, tmp_path):
    """``ply`` and ``vis`` need the decoded image: it travels from the prepare task to the
    writer, and the files are the local runner's, byte for byte (one torch thread)."""
    _, faults = cluster
    clear(faults)
    save, items = {"depth", "ply", "vis"}, images[:2]
    reference = tmp_path / "local"
    with torch_threads(1):
        run_batch(load_model(), items, reference, save, options=BatchOptions(progress=False))
    summary = run_ray(items, tmp_path / "ray", save, RayOptions())
    assert (summary.done, summary.failed) == (2, [])
    got = tree(tmp_path / "ray")
    assert sorted(n for n in got if n.endswith((".ply", ".vis.png"))) == sorted(
        f"{i.stem}{suffix}" for i in items for suffix in (".ply", ".vis.png")
    )
    assert got == tree(reference)


def test_the_stages_count_images_whose_camera_does_not_fit(tmp_path, monkeypatch):
    """The stages in this process (no Ray) with a model trained on an assumed camera: each
    image whose camera does not fit carries ``cameras.image_camera_mismatch``'s line, and the
    run's summary counts them as the local runner's does."""
    from dataclasses import replace

    from PIL import Image

    from conftest import TINY_SPEC, TinyNet
    from metricdepth import ray_stages
    from metricdepth.batch import BatchSummary
    from metricdepth.models.registry import DepthModel
    from metricdepth.predictor import Predictor
    from metricdepth.ray_engine import _settle

    spec = replace(TINY_SPEC, assumed_focal_px=100.0)
    model = DepthModel(spec, TinyNet()).eval()
    monkeypatch.setattr(ray_stages, "_load", lambda options: Predictor(model, options.focal_mode))
    monkeypatch.setattr(ray_stages, "_provenance", lambda predictor: {"model": spec.name})
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 3), np.uint8)).save(path)
    cameras = {"fits": (102.0, 102.0, 31.5, 23.5), "wide": (150.0, 150.0, 31.5, 23.5)}
    items = [InputItem(path, key, camera) for key, camera in cameras.items()]
    local = run_batch(model, items, tmp_path / "local", set(), options=BatchOptions(progress=False))
    assert local.camera_mismatch == 1

    options = RayOptions()
    batch = {
        "key": np.array(list(cameras), dtype=object),
        "path": np.array([str(path)] * 2, dtype=object),
        "intrinsics": np.array(list(cameras.values())),
    }
    prepared = ray_stages.prepare_batch(batch, spec, options, keep_image=False)
    actor = type("Actor", (ray_stages.ForwardActor,), {"options": options})()
    result = ray_stages.finish_batch(actor(prepared), spec, None, {"depth"}, False)
    assert list(result["camera_mismatch"]) == [None, local.mismatch_example]
    summary = BatchSummary(total=2)
    rows = [dict(zip(result, row, strict=True)) for row in zip(*result.values(), strict=True)]
    _settle(rows, summary, False, 2)
    assert (summary.done, summary.camera_mismatch) == (2, 1)
    assert summary.mismatch_example == local.mismatch_example


def run_cli(*args: str) -> tuple[int, str, str]:
    """The command line in this process (typer's runner): ``(exit code, stderr, stdout)``."""
    from typer.testing import CliRunner

    from metricdepth.cli import app

    run = CliRunner().invoke(app, list(args))
    return run.exit_code, run.stderr, run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "spark"], "error: --engine must be local or ray, got 'spark'"),
        (["--num-workers", "2"], "error: --address, --num-workers and --gpus-per-worker need"),
        (["--engine", "ray", "--num-workers", "0"], "error: --num-workers must be 1 or more"),
        (
            ["--engine", "ray", "--gpus-per-worker", "1"],
            "error: --gpus-per-worker runs the model on GPUs: give --device cuda",
        ),
        (
            ["--engine", "ray", "--device", "cuda"],
            "error: --device cuda with --engine ray needs --gpus-per-worker",
        ),
        (["--engine", "ray", "--workers", "2"], "error: --workers is for the local engine"),
        (
            ["--engine", "ray", "--backend", "onnxruntime"],
            "error: --engine ray runs the torch backend",
        ),
        (["--engine", "ray", "--model", "nope"], "error: "),
        (["--engine", "ray", "--save", "normal"], "error: --save normal: metricdepth-small has no"),
    ],
)
def test_cli_refuses_options_that_do_not_fit_the_engine(tmp_path, args, message):
    code, stderr, _ = run_cli("predict", "--out", str(tmp_path / "out"), *args)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith(message), stderr
    assert not (tmp_path / "out").exists()


def test_cli_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    code, stderr, _ = run_cli("predict", "--engine", "ray", "--out", str(tmp_path / "o"))
    assert code == 2
    assert stderr.strip() == "error: the ray engine needs Ray Data: pip install 'metricdepth[ray]'"


def test_importing_metricdepth_never_imports_ray():
    code = (
        "import sys, metricdepth, metricdepth.cli, metricdepth.ray_engine, "
        "metricdepth.ray_stages; print('ray' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "False", run.stderr
