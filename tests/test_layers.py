"""The package's layers point one way, and no module imports itself back through others.

Layers, lowest first (a module may import its own layer and those below, never above):

0. core: the camera, the image and its canonical move, geometry, files, lens distortion, the
   camera policy and EXIF, and the plain result types (``Prediction``, measurements, colours);
1. models and data (``models.*``, ``data.*``);
2. the prediction pipeline and its executors (everything else at the top level);
3. training, evaluation and export (``train.*``, ``evaluate.*``, ``export``);
4. the front ends (``cli``, ``web.*``, ``__main__``).

Every ``import`` counts, at module level or inside a function (a lazy import is still a
dependency). ``from metricdepth import x`` counts as importing ``metricdepth.x``; importing
the package itself (``metricdepth.__init__``, which re-exports the public API lazily) is not
an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "metricdepth"

CORE = {
    "camera", "frame", "canonical", "geometry", "io", "distortion", "exif", "cameras",
    "prediction", "measure", "vis",
}  # fmt: skip
TOP_LEVEL_3 = {"export"}
FRONT = {"cli", "__main__"}
NAMES = ("core", "models/data", "pipeline", "train/evaluate/export", "cli/web")


def layer(module: str) -> int:
    """The layer (0-4) of a module named relative to the package (``data.dataset``)."""
    head = module.split(".")[0]
    if module in CORE:
        return 0
    if head in ("models", "data"):
        return 1
    if head in ("train", "evaluate") or module in TOP_LEVEL_3:
        return 3
    if head == "web" or module in FRONT:
        return 4
    return 2


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (relative names; packages' own modules resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("metricdepth."):
                rel = name.removeprefix("metricdepth.")
                if rel in known:
                    out.add(rel)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known) - {name} for name, path in found.items()}


def test_the_graph_is_read():
    g = graph()
    assert {"camera", "canonical", "cli", "models.registry", "train.loop"} <= set(g)
    assert "camera" in g["canonical"]  # a real edge is seen
    assert "models.registry" in g["cli"]  # lazy imports inside functions are seen too


def test_every_import_points_down_or_sideways():
    g = graph()
    upward = sorted(
        f"{m} ({NAMES[layer(m)]}) imports {t} ({NAMES[layer(t)]})"
        for m, targets in g.items()
        for t in targets
        if layer(t) > layer(m)
    )
    assert upward == []


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(g.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize(
    ("module", "expected"),
    [("camera", 0), ("data.dataset", 1), ("pipeline", 2), ("train.loop", 3), ("web.app", 4)],
)
def test_layer_assignment(module, expected):
    assert layer(module) == expected
