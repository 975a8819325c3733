"""Faults and a write log for the Ray executor's tests, installed in every Ray worker process
(``runtime_env={"worker_process_setup_hook": "ray_faults.install", "env_vars":
{FAULTS: folder}}``) and steered by files in that folder, so one Ray instance serves all tests:

* ``kill-once`` holding a key: the forward actor that gets that image first dies
  (``os._exit``) before running it, once (``killed`` records that it did);
* ``slow`` holding seconds: every image's write waits that long first;
* ``writes.log``: one line per image written (its key), appended after the write.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FAULTS = "METRICDEPTH_RAY_FAULTS"


def install() -> None:
    folder = os.environ.get(FAULTS)
    if not folder:
        return
    from metricdepth import ray_stages

    faults = Path(folder)
    call, write = ray_stages.ForwardActor.__call__, ray_stages._write

    def faulty_call(self, batch):
        target = faults / "kill-once"
        if target.exists() and target.read_text().strip() in {str(k) for k in batch["key"]}:
            try:  # exactly once, whichever process gets there first
                os.close(os.open(faults / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return call(self, batch)

    def logged_write(prediction, image, out_dir, stem, save, about, sync):
        slow = faults / "slow"
        if slow.exists():
            time.sleep(float(slow.read_text()))
        write(prediction, image, out_dir, stem, save, about, sync)
        with open(faults / "writes.log", "a") as log:
            log.write(stem + "\n")

    ray_stages.ForwardActor.__call__ = faulty_call
    ray_stages._write = logged_write
