"""A run killed with SIGKILL part-way, then run again: every cell, none corrupt, finished ones untouched."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from sd_styles.cli import main
from sd_styles.metadata import read_document

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics")


def write_experiment(folder: Path, model: Path) -> Path:
    """Eight 32-wide styles, plain (8 cells: a loss adds nothing to what resume must do), 64x64, 3 steps."""
    styles = ""
    for i in range(8):
        torch.save({f"<kill-{i}>": torch.randn(32, generator=torch.Generator().manual_seed(i))}, folder / f"k{i}.pt")
        styles += f'\n[[styles]]\nconcept = "k{i}.pt"\nseed = {i + 1}\n'
    path = folder / "kill.toml"
    path.write_text(f'name = "kill"\nmodel = "{model.as_posix()}"\nprompt = "a house by {{style}}"\nsteps = 3\n'
                    f'width = 64\nheight = 64\n{styles}', encoding="utf-8")
    return path


def finished(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith(".tmp-") and p.name != "grid.png")


def test_killed_run_resumes_without_losing_or_corrupting_cells(tiny_dir, tmp_path):
    toml = write_experiment(tmp_path, tiny_dir)
    out, cells = tmp_path / "out", tmp_path / "out" / "kill"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sd_styles", "run", str(toml), "--out", str(out),
                             "--batch-size", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 240
        while len(finished(cells)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no cleanup handlers run
    finally:
        proc.wait(timeout=60)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished(cells)}
    assert 2 <= len(before) < 8, "the run finished before it could be killed; make it slower"
    for path in before:  # whatever was on disk at the kill is a complete cell
        read_document(path)
    # debris of a writer killed mid-file (the kill above may or may not have left one)
    (cells / f".tmp-{proc.pid}-partial.png").write_bytes(b"\x89PNG\r\n\x1a\n half a file")

    stdout = io.StringIO()
    with redirect_stdout(stdout):
        # the same --batch-size: the plan's call shapes, so finished and resumed cells share one fingerprint
        assert main(["run", str(toml), "--out", str(out), "--batch-size", "1"]) == 0

    after = finished(cells)
    assert len(after) == 8
    assert not list(cells.glob(".tmp-*"))
    digests = {read_document(p)["digest"][:8] for p in after}  # every file decodes and carries its recipe
    assert {p.stem.rsplit("-", 1)[1] for p in after} == digests
    for path, (data, mtime) in before.items():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    rewritten = {Path(line) for line in stdout.getvalue().splitlines()}
    assert not rewritten & set(before) and set(after) - set(before) <= rewritten
