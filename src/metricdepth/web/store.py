"""The web server's results: a bounded store of prediction folders in one temporary folder.

Each prediction gets a folder ``<root>/<id>/`` holding its artefacts (depth ``.npy``, 16-bit
PNG, PLY, JSON record, the pictures the page shows). At most ``max_results`` are kept: adding
one more deletes the oldest folder, so a long-running server uses bounded disk. ``close()``
(called when the server shuts down) deletes the whole root.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metricdepth.prediction import Prediction

#: Result ids are 16 lowercase hex digits.
RESULT_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, eq=False)
class Result:
    """One prediction kept by the server.

    Attributes:
        id: 16 hex digits, the key in the store and in the artefact URLs.
        folder: where its files are.
        prediction: the ``Prediction`` without normals and confidence (those stay on disk):
            its ``depth_m`` and ``camera`` serve ``/api/measure``.
        files: kind -> (path, download name), e.g. ``"ply" -> (folder/x.ply, "photo.ply")``.
        summary: the JSON answer of ``/api/predict``.
    """

    id: str
    folder: Path
    prediction: Prediction
    files: dict[str, tuple[Path, str]]
    summary: dict[str, Any] = field(default_factory=dict)


class ResultStore:
    """Thread-safe, bounded, oldest-out store of ``Result`` folders under one temporary root."""

    def __init__(self, max_results: int = 8, root: Path | None = None) -> None:
        if max_results < 1:
            raise ValueError(f"max_results must be >= 1, got {max_results}")
        self.max_results = max_results
        parent = None if root is None else str(root)
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="metricdepth-web-", dir=parent))
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)

    def new_folder(self) -> tuple[str, Path]:
        """A fresh ``(id, folder)`` for a prediction under way (``discard`` it on failure)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the result store is closed")
            while True:
                result_id = secrets.token_hex(8)
                folder = self.root / result_id
                if result_id not in self._results and not folder.exists():
                    folder.mkdir()
                    return result_id, folder

    def add(self, result: Result) -> None:
        """Keep ``result``; delete the oldest results beyond ``max_results``."""
        with self._lock:
            self._results[result.id] = result
            while len(self._results) > self.max_results:
                _, oldest = self._results.popitem(last=False)
                shutil.rmtree(oldest.folder, ignore_errors=True)

    def get(self, result_id: str) -> Result | None:
        """The result with this id, or None (unknown, malformed or already deleted)."""
        if not RESULT_ID.fullmatch(result_id or ""):
            return None
        with self._lock:
            return self._results.get(result_id)

    def discard(self, folder: Path) -> None:
        """Delete the folder of a prediction that failed."""
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Forget every result and delete the root folder."""
        with self._lock:
            self._closed = True
            self._results.clear()
            shutil.rmtree(self.root, ignore_errors=True)
