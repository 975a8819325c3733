"""The ``metricdepth`` command line: thin commands over the Python API, heavy imports inside.

Bad input ends with one line ``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="metricdepth",
    help="Metric depth from one photo of any camera (Metric3D's canonical camera space).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXAMPLE_IMAGE = Path(__file__).parent / "assets" / "example_nyu.jpg"
#: NYU Depth v2 calibration of the bundled example (Metric3D's demo annotation).
EXAMPLE_INTRINSICS = (518.8579, 519.46961, 325.58245, 253.73617)

#: Options shared by the commands that run a model (one declaration, one help text).
ModelOption = Annotated[
    str | None, typer.Option(help="Registered name or model file; default: metricdepth-small.")
]
WeightsOption = Annotated[
    Path | None, typer.Option(help="Checkpoint of a registered official model (.pth).")
]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")]
DISTORTION_HELP = (
    "Lens distortion (OpenCV): k1,k2,p1,p2[,k3] or the 8 rational k1,k2,p1,p2,k3,k4,k5,k6; "
    "predicted on the undistorted image, written on the original pixel grid."
)
FISHEYE_HELP = "Fisheye lens (OpenCV equidistant / Kannala-Brandt): k1,k2,k3,k4."


def fail(message: str) -> None:
    """Print one error line (whitespace collapsed) and exit with code 2."""
    error_line(message)
    raise typer.Exit(2)


def error_line(message: object) -> None:
    """``error: MESSAGE`` on stderr, on one line (whitespace collapsed)."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)


def parse_size(text: str, option: str) -> tuple[int, int]:
    """``"616x1064"`` -> (616, 1064) as (height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{option} must be HEIGHTxWIDTH in pixels, e.g. 616x1064, got {text!r}")
    return int(parts[0]), int(parts[1])


def check_device(device: str) -> None:
    """``--device``: a ValueError (one ``error:`` line) for a device this machine lacks."""
    from metricdepth.models.registry import check_device as check

    try:
        check(device)
    except ValueError as error:  # "device 'cuda': why" -> "--device cuda: why"
        why = str(error).split(": ", 1)[-1]
        raise ValueError(f"--device {device}: {why}") from None


def resolve_camera(image: Path, intrinsics: str | None, focal: float | None):
    """The camera of an image file (given, EXIF or the announced default) and its source."""
    from metricdepth.cameras import resolve_camera as resolve

    camera, source, report = resolve(image, intrinsics=intrinsics, focal=focal)
    if report.get("warning"):
        typer.echo(f"warning: {report['warning']}", err=True)
    return camera, source


def trust_warning(net) -> None:
    """One ``warning:`` line on stderr when the model is not meant for real photographs."""
    warning = net.spec.trust_warning()
    if warning:
        typer.echo(f"warning: {warning}", err=True)


def _print_version(value: bool) -> None:
    if value:
        from metricdepth import __version__

        typer.echo(f"metricdepth {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Metric depth from one photo of any camera."""


@app.command()
def canonical(
    image: Annotated[
        Path | None, typer.Argument(help="Image file; the bundled example when omitted.")
    ] = None,
    intrinsics: Annotated[
        str | None, typer.Option(help="fx,fy,cx,cy in pixels of the image as displayed.")
    ] = None,
    focal: Annotated[
        float | None, typer.Option(help="Focal length in pixels (principal point centred).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The model whose canonical space to show: registered name or model file; "
            "default: the one predict uses (metricdepth-small)."
        ),
    ] = None,
    focal_mode: Annotated[
        str | None, typer.Option(help="mean: (fx+fy)/2; fx: fx only (default: the model's).")
    ] = None,
    input_size: Annotated[
        str | None, typer.Option(help="Network input HEIGHTxWIDTH (default: the model's).")
    ] = None,
    canonical_focal: Annotated[
        float | None, typer.Option(help="Canonical focal f_c in px (default: the model's).")
    ] = None,
    pad: Annotated[
        str | None,
        typer.Option(help="Padding placement: center or bottom_right (default: the model's)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write S.canonical.png and S.canonical.json here.")
    ] = None,
) -> None:
    """Show (and optionally write) how an image is moved into a model's canonical space."""
    try:
        summary = run_canonical(
            image, intrinsics, focal, focal_mode, input_size, canonical_focal, pad, out, model
        )
    except ValueError as error:
        fail(str(error))
    from rich.console import Console
    from rich.table import Table

    title = f"{Path(summary['image']).name} in the canonical space of {summary['model']}"
    table = Table(title=title, show_header=False)
    space = summary["space"]
    table.add_row("model", summary["model"])
    table.add_row("model space", f"f_c {space['focal_px']:g} px, input {space['input_hw']}")
    for key, value in summary["record"].items():
        table.add_row(key, str(value))
    table.add_row("camera_source", summary["camera_source"])
    for path in summary.get("written", []):
        table.add_row("written", path)
    Console().print(table)


def run_canonical(
    image, intrinsics, focal, focal_mode, input_size, canonical_focal, pad, out, model=None
):
    """The work of ``metricdepth canonical``; returns the summary it prints and writes.

    The space is ``model``'s (default: the model ``predict`` uses); ``input_size``,
    ``canonical_focal``, ``pad`` and ``focal_mode`` override its parts when given.
    """
    import json
    from dataclasses import asdict, replace

    import cv2

    from metricdepth.canonical import canonical_canvas
    from metricdepth.io import atomic_write, read_image
    from metricdepth.models.registry import model_spec

    if image is None:
        image = EXAMPLE_IMAGE
        if intrinsics is None and focal is None:
            intrinsics = ",".join(str(v) for v in EXAMPLE_INTRINSICS)
    if str(model or "").endswith(".onnx"):  # an exported graph describes itself
        from metricdepth.runtime import load_onnx

        spec = load_onnx(model).spec
    else:
        spec = model_spec(model)
    changes = {}
    if input_size is not None:
        changes["input_hw"] = parse_size(input_size, "--input-size")
    if canonical_focal is not None:
        changes["focal_px"] = canonical_focal
    if pad is not None:
        changes["pad_placement"] = pad
    space = replace(spec.space, **changes)
    rgb, _ = read_image(image)
    camera, source = resolve_camera(image, intrinsics, focal)
    canvas, record = canonical_canvas(rgb, camera, space, focal_mode or spec.focal_mode)
    if image == EXAMPLE_IMAGE and source == "given" and intrinsics is not None:
        source = "annotation"  # the bundled example's published calibration
    summary = {
        "image": str(image),
        "model": spec.name,
        "space": {**asdict(space), "input_hw": list(space.input_hw)},
        "camera_source": source,
        "record": record.to_dict(),
    }
    if out is not None:
        stem = Path(image).stem
        png, meta = Path(out) / f"{stem}.canonical.png", Path(out) / f"{stem}.canonical.json"
        summary["written"] = [str(png), str(meta)]
        with atomic_write(png) as tmp:
            if not cv2.imwrite(str(tmp), canvas[:, :, ::-1]):
                raise ValueError(f"could not write {png}")
        with atomic_write(meta) as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    return summary


@app.command()
def predict(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="Images, folders or Metric3D annotation JSONs; default: the example."),
    ] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    intrinsics: Annotated[
        str | None,
        typer.Option(
            help="fx,fy,cx,cy in pixels of the image as displayed; fx,fy,cx,cy@WxH if measured "
            "on a WxH image (rescaled to each image of the same aspect ratio)."
        ),
    ] = None,
    focal: Annotated[float | None, typer.Option(help="Focal length in pixels.")] = None,
    focal_mode: Annotated[
        str | None, typer.Option(help="mean: (fx+fy)/2; fx: fx only (default: the model's).")
    ] = None,
    device: DeviceOption = "cpu",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out"),
    save: Annotated[
        str, typer.Option(help="Extra files: png16,normal,confidence,ply,vis (depth always).")
    ] = "depth",
    workers: Annotated[
        int, typer.Option(help="Processes decoding images while the model runs (0: none).")
    ] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Skip images whose S.json exists and lists every --save kind."
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: only items I, I+N, I+2N, ... (0-based) of the input list, to split one "
            "run over N processes or machines."
        ),
    ] = None,
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going", help="Report a bad image in one line and go on (exit code 1)."
        ),
    ] = False,
    distortion: Annotated[str | None, typer.Option(help=DISTORTION_HELP)] = None,
    fisheye: Annotated[str | None, typer.Option(help=FISHEYE_HELP)] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="torch or onnxruntime (default: onnxruntime for a .onnx --model)."),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="torch backend: fp32 (optimised, same results) or bf16 (autocast)."),
    ] = None,
    fsync: Annotated[
        bool,
        typer.Option(
            "--fsync",
            help="fsync each output file before its S.json appears, so that it survives a "
            "power loss (slower; without it --resume redoes what a power loss cut short).",
        ),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="local (this process) or ray (a Ray cluster: pip install 'metricdepth[ray]')."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="--engine ray: the cluster (default: RAY_ADDRESS, else a local one)."),
    ] = None,
    num_workers: Annotated[
        int | None,
        typer.Option(help="--engine ray: model workers, each loads the model once (default 1)."),
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(help="--engine ray: GPUs per model worker (with --device cuda).")
    ] = None,
) -> None:
    """Predict metric depth; writes S.depth.npy and S.json (+ --save extras) per image."""
    from metricdepth.batch import BatchOptions
    from metricdepth.cameras import CameraOptions
    from metricdepth.data.inputs import parse_shard
    from metricdepth.distortion import lens_from_options
    from metricdepth.predictor import PrepareOptions

    try:
        lens = lens_from_options(distortion, fisheye)
        camera = CameraOptions.parse(intrinsics, focal, flags=True)
        prepare = PrepareOptions(camera, focal_mode, lens)
        if workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {workers}")
        shard_range = parse_shard(shard) if shard is not None else None
        options = BatchOptions(workers, resume, shard_range, keep_going, fsync=fsync)
        choice = ModelChoice(model, weights, device, backend, precision)
        where = EngineChoice(engine, address, num_workers, gpus_per_worker)
        summary, skipped = run_predict(inputs, choice, prepare, options, out, save, where)
    except ValueError as error:
        fail(str(error))
    line = summary.line()
    if skipped:
        line += f"; {skipped} file(s) in the folders skipped (metricdepth outputs or depth maps)"
    typer.echo(line)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


@dataclass(frozen=True)
class ModelChoice:
    """Which model ``predict`` runs and how: ``model`` (registered name, model file or .onnx;
    None: the default), ``weights`` (checkpoint file), ``device`` (``cpu``, ``cuda``, ...),
    ``backend`` (``torch`` or ``onnxruntime``; None: by the file), ``precision`` (``fp32`` or
    ``bf16``; None: eager). Checked when loaded (``load_predictor``)."""

    model: str | None = None
    weights: Path | None = None
    device: str = "cpu"
    backend: str | None = None
    precision: str | None = None


@dataclass(frozen=True)
class EngineChoice:
    """Where ``predict`` runs: ``name`` ``local`` or ``ray``; for Ray the cluster ``address``
    (None: RAY_ADDRESS, else a local one), ``num_workers`` model workers and
    ``gpus_per_worker``. Checked by ``ray_engine.command_options``."""

    name: str = "local"
    address: str | None = None
    num_workers: int | None = None
    gpus_per_worker: float | None = None


def run_predict(
    inputs, choice: ModelChoice, prepare, options, out: Path, save: str,
    engine: EngineChoice = EngineChoice(),
):  # fmt: skip
    """The work of ``metricdepth predict``: ``(batch summary, files skipped in folders)``.

    ``inputs``: paths (images, folders, annotation JSONs; empty: the bundled example);
    ``choice``: the model; ``prepare``: ``predictor.PrepareOptions`` (camera, focal mode,
    lens); ``options``: ``batch.BatchOptions``; ``out``: the output folder; ``save``: the
    ``--save`` text; ``engine``: local or a Ray cluster.
    """
    from metricdepth.batch import run_batch
    from metricdepth.cameras import default_count_warning
    from metricdepth.data.inputs import InputItem, collect_inputs
    from metricdepth.files import parse_save

    kinds = parse_save(save)
    camera = prepare.camera
    skipped: list = []
    if inputs:
        items = collect_inputs(list(inputs), skipped)
    else:
        items = [InputItem(EXAMPLE_IMAGE, EXAMPLE_IMAGE.stem, EXAMPLE_INTRINSICS)]
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    camera = prepare.camera
    if engine != EngineChoice():
        return _run_ray(choice, prepare, options, out, kinds, engine, items), len(skipped)
    check_device(choice.device)
    net = load_predictor(
        choice.model, choice.weights, choice.device, choice.backend, choice.precision,
        options.workers,
    )  # fmt: skip
    warn_assumed_camera(net.spec, camera.intrinsics, camera.focal_px, prepare.focal_mode)
    if prepare.distortion is not None and "image" in net.takes:
        raise ValueError(
            "--distortion and --fisheye need the torch backend (ONNX graphs are pinhole)"
        )
    check_outputs(net.spec, kinds)
    summary = run_batch(net, items, out, kinds, inputs=prepare, options=options)
    if summary.default_camera:
        typer.echo(f"warning: {default_count_warning(summary.default_camera)}", err=True)
    given = camera.intrinsics is not None or camera.focal_px is not None
    warn_camera_mismatch(summary, given=given)
    if summary.done:
        trust_warning(net)  # after the run: a refused or failed run stays one error line
    return summary, len(skipped)


def _run_ray(choice, prepare, options, out, kinds, engine, items):
    """``run_predict`` on a Ray cluster (``metricdepth.ray_engine``): its batch summary."""
    from metricdepth.cameras import default_count_warning
    from metricdepth.ray_engine import command_options, model_spec, run_ray

    camera = prepare.camera
    ray_options, address = command_options(
        (engine.name, engine.address, engine.num_workers, engine.gpus_per_worker),
        model=choice.model, weights=choice.weights, device=choice.device,
        precision=choice.precision, backend=choice.backend, workers=options.workers,
        intrinsics=camera.intrinsics, focal=camera.focal_px, focal_mode=prepare.focal_mode,
        distortion=prepare.distortion, fsync=options.fsync,
    )  # fmt: skip
    spec = model_spec(ray_options)
    warn_assumed_camera(spec, camera.intrinsics, camera.focal_px, prepare.focal_mode)
    check_outputs(spec, kinds)
    summary = run_ray(
        items, out, kinds, ray_options, address=address, resume=options.resume,
        shard=options.shard, keep_going=options.keep_going,
    )  # fmt: skip
    if summary.default_camera:
        typer.echo(f"warning: {default_count_warning(summary.default_camera)}", err=True)
    given = camera.intrinsics is not None or camera.focal_px is not None
    warn_camera_mismatch(summary, given=given)
    if summary.done and (warning := spec.trust_warning()):
        typer.echo(f"warning: {warning}", err=True)
    return summary


def check_outputs(spec, kinds) -> None:
    """A ValueError line when ``--save`` asks for an output (normals, confidence) that the
    model does not have."""
    lacking = sorted(kinds & {"normal", "confidence"} - set(spec.outputs))
    if lacking:
        has = ", ".join(spec.outputs) or "none"
        raise ValueError(
            f"--save {','.join(lacking)}: {spec.name} has no {' or '.join(lacking)} output "
            f"(its outputs besides depth: {has}); the Metric3D ViT models have both"
        )


def warn_assumed_camera(spec, intrinsics, focal, focal_mode) -> None:
    """One ``warning:`` line when ``spec`` assumed its camera and the run's may differ."""
    from metricdepth.cameras import run_camera_warning

    if message := run_camera_warning(spec, intrinsics, focal, focal_mode):
        typer.echo(f"warning: {message}", err=True)


def warn_camera_mismatch(summary, given: bool) -> None:
    """After a batch run: one ``warning:`` line when images' own cameras (annotation, EXIF,
    default) did not fit a model trained on an assumed camera (a run-wide camera that does
    not fit was warned about before the run: ``warn_assumed_camera``)."""
    if summary.camera_mismatch and not given:
        typer.echo(
            f"warning: {summary.camera_mismatch} image(s) had a camera that does not fit the "
            f"model; the first: {summary.mismatch_example}",
            err=True,
        )


def load_predictor(model, weights, device, backend, precision, workers=0):
    """The model ``predict`` runs: a ``DepthModel`` (optimised with ``precision``) or ONNX.

    ONNX Runtime's threads are set when its session opens: with ``workers`` loader processes
    they leave those cores to the workers, as ``run_batch`` does with torch's threads.
    """
    from metricdepth.pipeline import load_model
    from metricdepth.runtime import BACKENDS, PRECISIONS, default_threads, load_onnx, set_threads

    if backend is None:
        backend = "onnxruntime" if str(model or "").endswith(".onnx") else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "onnxruntime":
        if model is None:
            raise ValueError("--backend onnxruntime needs --model FILE.onnx (metricdepth export)")
        if weights is not None or device != "cpu" or precision is not None:
            raise ValueError("--backend onnxruntime takes no --weights, --device or --precision")
        return load_onnx(model, max(1, default_threads() - workers) if workers else None)
    if str(model or "").endswith(".onnx"):
        raise ValueError(f"{model} is an ONNX file: run it with --backend onnxruntime")
    set_threads()  # the CPUs this process may use, not the machine's count
    return load_model(model, weights=weights, device=device, precision=precision)


@app.command()
def export(
    model: Annotated[
        str | None,
        typer.Argument(help="Registered name or model file; default: metricdepth-small."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output file (.onnx).")] = None,
    weights: WeightsOption = None,
    format: Annotated[str, typer.Option("--format", help="Only onnx.")] = "onnx",
    camera_input: Annotated[
        str, typer.Option(help="focal: input focal_px (1,); intrinsics: fx,fy,cx,cy (4,).")
    ] = "focal",
    image_dtype: Annotated[str, typer.Option(help="uint8 or float32 (0-255 RGB).")] = "uint8",
) -> None:
    """Export image + focal -> metric depth (whole pipeline) as one self-describing graph."""
    import os

    try:
        from metricdepth.models.registry import MODELS, load_model

        if format != "onnx":
            raise ValueError(f"--format must be onnx, got {format!r}")
        if out is None:
            raise ValueError("--out FILE.onnx is required")
        if out.suffix != ".onnx":
            raise ValueError(f"--out must end in .onnx, got {out}")
        if model in MODELS and weights is None:
            raise ValueError(f"{model} needs its checkpoint: pass --weights FILE")
        parent = out.resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ValueError(f"--out {out}: folder {parent} does not exist or is not writable")
        from metricdepth.export import export_onnx

        path = export_onnx(
            load_model(model, weights=weights),
            out,
            camera_input=camera_input,
            image_dtype=image_dtype,
        )
    except ValueError as error:
        fail(str(error))
    typer.echo(f"wrote {path}")


@app.command()
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="Official Metric3D .pth checkpoint.")],
    out: Annotated[Path, typer.Option(help="Output .safetensors (a .json spec is written too).")],
    model: Annotated[
        str | None, typer.Option(help="Registered name; detected from the weights if omitted.")
    ] = None,
) -> None:
    """Convert an official checkpoint to a self-describing .safetensors + .json pair."""
    from metricdepth.models.registry import convert_official

    try:
        path = convert_official(checkpoint, out, model)
    except ValueError as error:
        fail(str(error))
    typer.echo(f"wrote {path} and {path.with_suffix('.json')}")


@app.command()
def camera(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    intrinsics: Annotated[str | None, typer.Option(help="fx,fy,cx,cy (to compare).")] = None,
    focal: Annotated[float | None, typer.Option(help="Focal length in pixels.")] = None,
) -> None:
    """Print the camera metricdepth would use for IMAGE: EXIF findings, rule, intrinsics."""
    from metricdepth.cameras import camera_report

    try:
        typer.echo(camera_report(image, intrinsics, focal))
    except ValueError as error:
        fail(str(error))


@app.command()
def measure(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    points: Annotated[list[str], typer.Option(help="x1,y1,x2,y2 pixel pair (repeatable).")],
    model: ModelOption = None,
    weights: WeightsOption = None,
    intrinsics: Annotated[str | None, typer.Option(help="fx,fy,cx,cy in pixels.")] = None,
    focal: Annotated[float | None, typer.Option(help="Focal length in pixels.")] = None,
    window: Annotated[int, typer.Option(help="Median window radius in pixels.")] = 2,
    device: DeviceOption = "cpu",
    distortion: Annotated[str | None, typer.Option(help=DISTORTION_HELP)] = None,
    fisheye: Annotated[str | None, typer.Option(help=FISHEYE_HELP)] = None,
) -> None:
    """Distance in metres between the 3-D points under pixel pairs, and each point's depth."""
    try:
        from metricdepth.distortion import lens_from_options
        from metricdepth.io import read_image
        from metricdepth.measure import measure as measure_pair
        from metricdepth.measure import measure_report, parse_points
        from metricdepth.models.registry import load_model
        from metricdepth.pipeline import predict as run_model

        check_device(device)
        lens = lens_from_options(distortion, fisheye)
        rgb, _ = read_image(image)
        pairs = parse_points(points, (rgb.shape[1], rgb.shape[0]))
        cam, source = resolve_camera(image, intrinsics, focal)
        net = load_model(model, weights=weights, device=device)
        prediction = run_model(net, rgb, cam, camera_source=source, distortion=lens)
        results = [measure_pair(prediction, p1, p2, window=window) for p1, p2 in pairs]
        trust_warning(net)
        typer.echo(measure_report(results, camera=prediction.camera, camera_source=source))
    except ValueError as error:
        fail(str(error))


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (rgb/, depth/, annotations.json).")],
    n: Annotated[int, typer.Option(help="Number of scenes.")] = 100,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    size: Annotated[str, typer.Option(help="Image HEIGHTxWIDTH.")] = "96x128",
) -> None:
    """Render synthetic multi-camera scenes in Metric3D's annotation format."""
    try:
        from metricdepth.data.synthetic import SynthConfig, write_dataset

        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder")
        height, width = parse_size(size, "--size")
        config = SynthConfig(height=height, width=width, sizes=((height, width),))
        path = write_dataset(out, n, seed=seed, config=config)
    except ValueError as error:
        fail(str(error))
    typer.echo(f"wrote {n} scenes; annotations: {path}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Training config (YAML).")],
    out: Annotated[Path | None, typer.Option(help="Runs folder (default: the config's).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the run's last checkpoint.")] = True,
) -> None:
    """Train with canonical label scaling (use torchrun + 'python -m metricdepth.train' for DDP)."""
    try:
        from metricdepth.train.loop import run_training

        run_dir = run_training(config, out_dir=out, resume=resume)
    except ValueError as error:
        fail(str(error))
    typer.echo(f"run folder: {run_dir}")
    model_file = Path(run_dir) / "model.safetensors"
    if model_file.is_file():
        from metricdepth.models.registry import read_spec

        typer.echo(f"model: {model_file} (name {read_spec(model_file).name})")
        typer.echo(f"use it: metricdepth predict photo.jpg --model {model_file}")


@app.command("eval")
def evaluate(
    annotations: Annotated[Path, typer.Argument(help="Metric3D annotation JSON with depth.")],
    model: Annotated[str | None, typer.Option(help="Model name or file (runs it).")] = None,
    weights: WeightsOption = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Folder of S.depth.npy from 'metricdepth predict'.")
    ] = None,
    protocol: Annotated[str, typer.Option(help="plain, nyu or kitti.")] = "plain",
    crop: Annotated[
        str | None,
        typer.Option(
            help="Crop instead of the protocol's: kitti takes eigen (default, Metric3D/BTS "
            "rows 0.3324-0.9135) or garg (rows 0.4081-0.9919); nyu takes eigen; any takes none."
        ),
    ] = None,
    min_depth: Annotated[float | None, typer.Option(help="GT cap, metres.")] = None,
    max_depth: Annotated[float | None, typer.Option(help="GT cap, metres.")] = None,
    align: Annotated[str, typer.Option(help="none or median (reported as its own row).")] = "none",
    skip_missing: Annotated[bool, typer.Option(help="Skip and count missing files.")] = False,
    csv: Annotated[Path | None, typer.Option(help="Per-image rows to this CSV.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Metrics to this JSON.")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Score depth against ground truth under a declared protocol."""
    try:
        from metricdepth.evaluate.harness import eval_report, run_eval

        check_device(device)
        if model is None and predictions is None:
            model = "metricdepth-small"  # the bundled default
        result = run_eval(
            annotations, model=model, weights=weights,
            predictions=predictions, protocol=protocol, min_depth=min_depth,
            max_depth=max_depth, align=align, crop=crop, skip_missing=skip_missing, csv_path=csv,
            json_path=json_out, device=device,
        )  # fmt: skip
    except ValueError as error:
        fail(str(error))
    typer.echo(eval_report(result))


@app.command()
def serve(
    model: ModelOption = None,
    weights: WeightsOption = None,
    host: Annotated[str, typer.Option(help="Address to bind (localhost only by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    device: DeviceOption = "cpu",
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, MB.")] = 25.0,
    max_megapixels: Annotated[
        float, typer.Option(help="Largest accepted image, millions of pixels.")
    ] = 50.0,
) -> None:
    """Serve the local web page: drop a photo, see metric depth and 3-D points, measure."""
    try:
        import uvicorn

        from metricdepth.web.app import create_app
    except ImportError as error:
        fail(f"the web page needs the web extra ({error}): pip install 'metricdepth[web]'")
    try:
        if not 0 < max_upload_mb < float("inf"):
            raise ValueError(f"--max-upload-mb must be a number > 0, got {max_upload_mb}")
        if not 0 < max_megapixels < float("inf"):
            raise ValueError(f"--max-megapixels must be a number > 0, got {max_megapixels}")
        if not 0 <= port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {port}")
        check_device(device)
        from metricdepth.models.registry import load_model

        net = load_model(model, weights=weights, device=device)
        web = create_app(
            net,
            max_upload_bytes=int(max_upload_mb * 1_000_000),
            max_pixels=max(1, int(max_megapixels * 1_000_000)),
        )
    except ValueError as error:
        fail(str(error))
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: serving on {host}: other machines can reach this page", err=True)
    trust_warning(net)  # the page shows it too
    typer.echo(f"metricdepth: serving {net.spec.name} on http://{host}:{port}/ (Ctrl-C stops)")
    try:
        uvicorn.run(web, host=host, port=port, log_level="warning")
    except (KeyboardInterrupt, _Interrupted):  # uvicorn re-raises the Ctrl-C that stopped it
        pass  # Ctrl-C is how a server stops: exit 0


@app.command("models")
def models_command() -> None:
    """List the registered models and what each is meant for."""
    from metricdepth.models.registry import ASSETS, DEFAULT_MODEL, MODELS, read_spec

    try:
        bundled = read_spec(ASSETS / f"{DEFAULT_MODEL}.safetensors")
    except ValueError as error:
        fail(str(error))
    typer.echo(f"{DEFAULT_MODEL}  (default, bundled); for: {bundled.use_line()}")
    for name, (spec, filename) in MODELS.items():
        typer.echo(f"{name}  {spec.description}; checkpoint {filename}; for: {spec.use_line()}")


class _Interrupted(BaseException):
    """Ctrl-C reaching a command: click and typer turn a ``KeyboardInterrupt`` into "Aborted!"
    and exit 1, so the CLI's SIGINT handler raises this instead, which reaches ``main``."""


def _on_sigint(signum, frame) -> None:
    raise _Interrupted


def main() -> None:
    """Console-script entry point."""
    import signal
    import threading

    from metricdepth.data.loader import WorkerDied  # stdlib only: cheap

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_sigint) if main_thread else None
    try:
        app()
    except OSError as error:  # unwritable output folder, disk full, ...
        error_line(error)
        raise SystemExit(2) from None
    except WorkerDied as error:  # a loader worker or the writer process was killed (OOM, ...)
        error_line(error)
        raise SystemExit(1) from None
    except (KeyboardInterrupt, _Interrupted):  # a batch run's second Ctrl-C, or any other
        typer.echo("error: interrupted", err=True)
        raise SystemExit(130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
