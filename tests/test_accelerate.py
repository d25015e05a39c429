"""Scale-out: `accelerate launch` with 2 CPU processes writes exactly the images of a single-process run.

Call batch k of the plan goes to process k mod 2 (whole batches, so the call shapes and the pixels
are those of a single-process run); each cell is rendered by exactly one process, counted from the
`process` every cell records, and from the paths each process prints.

accelerate 1.15's `--cpu --num_processes N` only spawns N processes through MPI (its simple launcher
runs one process otherwise); `--multi_gpu` starts them with torch.distributed.run, and with
`--device cpu` (or no CUDA) sd-styles joins them in a gloo process group (accelerate's MULTI_CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
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


def test_a_killed_two_process_run_resumes_to_the_single_process_images(tiny_dir, tmp_path):
    # enough steps that a cell takes a good fraction of a second: the kill lands while work is left
    toml = write_run(tmp_path, tiny_dir, n=5, guided=True)
    toml.write_text(toml.read_text(encoding="utf-8").replace("steps = 2", "steps = 60"), encoding="utf-8")
    single, multi = tmp_path / "single", tmp_path / "multi"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = ["run", str(toml), "--batch-size", "1", "--device", "cpu"]
    reference = subprocess.run([sys.executable, "-m", "sd_styles", *run, "--out", str(single)],
                               capture_output=True, text=True, env=env, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]

    def launch(**popen) -> subprocess.Popen:
        return subprocess.Popen(
            ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
             "-m", "sd_styles", *run, "--out", str(multi)], env=env, text=True, **popen)

    # SIGKILL the launcher and both workers once the first cells are on disk. torchrun starts each worker in a
    # session of its own, so a kill of the launcher's process group would leave them running: kill the tree.
    first = launch(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = multi / "batch"
    deadline = time.monotonic() + 600
    while len(list(folder.glob("[!.]*.png"))) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the run ended before it could be killed"
    launcher = psutil.Process(first.pid)
    tree = [launcher, *launcher.children(recursive=True)]
    workers = [p for p in tree if p.cmdline()[1:4] == ["-u", "-m", "sd_styles"]]
    assert len(workers) == 2, [p.cmdline() for p in tree]   # both workers were found, so both are killed
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive
    first.wait(timeout=60)
    survived = {p.name: p.stat().st_mtime_ns for p in folder.glob("[!.]*.png")}   # not a killed writer's .tmp-*
    assert 2 <= len(survived) < 10 and "grid.png" not in survived and not (folder / "manifest.json").exists()

    second = launch(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    names = sorted(p.name for p in (single / "batch").glob("*.png") if p.name != "grid.png")
    assert sorted(p.name for p in folder.glob("*.png") if p.name != "grid.png") == names
    for name in names:
        assert pixel_diff(Image.open(single / "batch" / name), Image.open(folder / name)) == 0, name
    # the finished cells were kept as they were; only the others were rendered (once each) and printed
    assert {name: (folder / name).stat().st_mtime_ns for name in survived} == survived
    printed = Counter(Path(line).name for line in out.splitlines() if line.endswith(".png"))
    assert set(printed) == (set(names) - set(survived)) | {"grid.png"} and max(printed.values()) == 1
    assert len(json.loads((folder / "manifest.json").read_text())["cells"]) == 10
    assert not list(folder.glob(".tmp-*"))   # a killed writer's debris is cleaned before any process writes
