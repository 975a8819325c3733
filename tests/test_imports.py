"""Importing any module of the package never imports torchvision (or timm)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

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


def test_every_public_name_resolves():
    for name in metricdepth.__all__:
        assert getattr(metricdepth, name) is not None, name
