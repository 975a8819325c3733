"""Importing any module of the package never imports torchvision (or timm)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import metricdepth


def all_modules() -> list[str]:
    names = ["metricdepth"]
    for info in pkgutil.walk_packages(metricdepth.__path__, prefix="metricdepth."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_package_has_the_core_modules():
    names = set(all_modules())
    expected = {"camera", "frame", "canonical", "geometry", "io", "cli"}
    assert {f"metricdepth.{n}" for n in expected} <= names


def test_no_module_imports_torchvision_or_timm():
    modules = all_modules()
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'timm'))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'bad': bad}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["torch"]  # the heavy modules really were imported
    assert report["bad"] == []


def test_cli_help_does_not_import_torch():
    code = "import sys; import metricdepth.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_the_public_api_is_the_committed_list_and_every_name_imports():
    """``metricdepth.__all__`` is tests/public_api.txt (one name a line, sorted): a name added
    or removed is a change of the public API, made in both places. Each name imports, in a
    fresh interpreter (the lazy ones too) and here."""
    listed = (Path(__file__).with_name("public_api.txt")).read_text().split()
    assert listed == sorted(set(listed)), "public_api.txt: one name a line, sorted, no repeats"
    assert sorted(metricdepth.__all__) == listed
    assert len(set(metricdepth.__all__)) == len(metricdepth.__all__)
    code = f"from metricdepth import {', '.join(listed)}; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    for name in listed:
        assert getattr(metricdepth, name) is not None, name
