"""Scale-out: `accelerate launch` with 2 CPU processes writes exactly the images of a single-process run.

Call batch k of the plan goes to process k mod 2 (whole batches, so the call shapes and the pixels
are those of a single-process run); each cell is rendered by exactly one process, counted from the
`process` every cell records, and from the paths each process prints.

accelerate 1.15's `--cpu --num_processes N` only spawns N processes through MPI (its simple launcher
runs one process otherwise); `--multi_gpu` starts them with torch.distributed.run, and with
`--device cpu` (or no CUDA) sd-styles joins them in a gloo process group (accelerate's MULTI_CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import pixel_diff
from PIL import Image
from test_batching import write_run

from sd_styles.metadata import read_document

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None or sys.platform == "win32",
                                reason="needs the accelerate launcher")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_exactly_the_single_process_images(tiny_dir, tmp_path):
    toml = write_run(tmp_path, tiny_dir, n=5, guided=True)       # five styles, plain + guided: 10 cells
    single, multi = tmp_path / "single", tmp_path / "multi"
    # one CPU thread per process on both sides: torchrun sets it, and thread counts change CPU rounding
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    reference = subprocess.run([sys.executable, "-m", "sd_styles", "run", str(toml), "--out", str(single),
                                "--batch-size", "3", "--device", "cpu"], capture_output=True, text=True, env=env,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    proc = subprocess.run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         "-m", "sd_styles", "run", str(toml), "--out", str(multi), "--batch-size", "3", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, theirs = single / "batch", multi / "batch"
    names = sorted(p.name for p in ours.glob("*.png") if p.name != "grid.png")
    assert len(names) == 10
    assert sorted(p.name for p in theirs.glob("*.png") if p.name != "grid.png") == names
    for name in names:
        assert pixel_diff(Image.open(ours / name), Image.open(theirs / name)) == 0, name
    # each cell rendered once: printed once over both processes, and recorded with exactly one process
    printed = Counter(Path(line).name for line in proc.stdout.splitlines() if line.endswith(".png"))
    assert all(printed[name] == 1 for name in names)
    manifest = json.loads((theirs / "manifest.json").read_text())
    by_process = Counter(e["process"] for e in manifest["cells"])
    assert set(by_process) == {0, 1} and sum(by_process.values()) == 10   # both did work: 4 call batches
    for e in manifest["cells"]:
        assert read_document(theirs / e["file"])["rendered_with"]["process"] == {"index": e["process"], "count": 2}
