"""The command line contract: paths on stdout, one-line errors with exit 2, runtime failures exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sd_styles.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m sd_styles` in a fresh process, offline, as a user or another program would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sd_styles", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse usage errors leave through SystemExit(2)
        return stop.code


@pytest.mark.parametrize("bad", [
    ["--size", "65x64"], ["--size", "abc"], ["--steps", "0"], ["--steps", "-3"], ["--cfg", "abc"],
    ["--cfg", "nan"], ["--scheduler", "k_lms"], ["--seed", "x"], ["--model", "/no/such/model/folder"],
    ["--model", "./missing-folder"], ["--device", "tpu"], ["--dtype", "fp8"],
])
def test_bad_input_exits_2_with_one_line(bad, capsys, tmp_path):
    code = _exit_code(["generate", "a cat", "--model", "tiny", "--out", str(tmp_path), *bad])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_missing_model_folder_in_a_fresh_process(tmp_path):
    proc = run_cli("generate", "a cat", "--model", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_uncached_hub_model_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    proc = subprocess.run([sys.executable, "-m", "sd_styles", "generate", "a cat", "--model", "someone/not-cached",
                           "--steps", "1", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "someone/not-cached" in lines[0] and "--model tiny" in lines[0]


def test_generate_tiny_writes_png_and_prints_only_its_path(tmp_path):
    proc = run_cli("generate", "a photo of an astronaut", "--model", "tiny", "--seed", "1", "--steps", "4",
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.strip().splitlines()
    assert len(paths) == 1 and paths[0].endswith(".png")
    with Image.open(paths[0]) as im:
        assert im.size == (64, 64)
        im.load()
        assert "parameters" in im.info and "Seed: 1" in im.info["parameters"]


def test_generate_several_seeds_one_file_each_and_same_pixels_as_api(tmp_path, tiny_model, tiny_dir):
    from helpers import pixel_diff

    from sd_styles.rendering import make_recipe, render

    proc = run_cli("generate", "a red fox", "--model", str(tiny_dir), "--seed", "3", "--seed", "4",
                   "--steps", "3", "--scheduler", "euler-a", "--negative", "blurry", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.strip().splitlines()
    assert len(paths) == 2 and len(set(paths)) == 2
    recipes = [make_recipe(tiny_model, "a red fox", negative_prompt="blurry", seed=seed, steps=3,
                           scheduler="euler-a") for seed in (3, 4)]
    results = render(tiny_model, recipes, progress=False)   # the same call shape: both seeds stacked
    for path, res in zip(paths, results):
        assert pixel_diff(Image.open(path).convert("RGB"), res.image) == 0


def test_help_and_module_entry_point():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "generate" in proc.stdout


def test_missing_concept_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import sd_styles.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load when a concept is missing")

    monkeypatch.setattr(sd_styles.models, "load_model", no_load)
    code = _exit_code(["generate", "a cat", "--model", "tiny", "--concept", str(tmp_path / "nope.bin"),
                       "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "nope.bin" in err
