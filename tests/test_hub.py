"""sd_styles.hub: one hub-id rule, a dead hub detected once and fast, snapshot revisions recorded and pinned."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sd_styles import hub

ROOT = Path(__file__).resolve().parents[1]
COMMIT_1, COMMIT_2 = "1" * 40, "2" * 40


@pytest.mark.parametrize("source, expected", [
    ("CompVis/stable-diffusion-v1-4", True), ("sd-concepts-library/gta5-artwork", True), ("org/name.v2", True),
    ("tiny", False), ("./org/name", False), ("/abs/path", False), ("~/models/x", False), ("a/b/c", False),
    ("org\\name", False), ("styles/ink.safetensors", False), ("styles/ink.bin", False), ("demo:random-1", False),
])
def test_one_rule_decides_hub_id_or_path(source, expected):
    assert hub.is_hub_id(source) is expected


def test_an_existing_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not hub.is_hub_id("org/name")


def test_no_other_module_has_its_own_hub_id_rule():
    # the three rules of old (models, losses -- now losses_clip --, concept_sources) are gone: everything asks sd_styles.hub
    for name in ("models.py", "losses_clip.py", "concept_sources.py", "decoders.py", "refiner.py"):
        text = (ROOT / "sd_styles" / name).read_text(encoding="utf-8")
        assert "count(\"/\")" not in text and "_HUB_ID" not in text and "def is_hub_id" not in text
        assert "is_hub_id" in text or "hub." in text


def test_snapshot_of_reads_the_commit_from_a_cache_path(tmp_path):
    path = tmp_path / "models--org--x" / "snapshots" / COMMIT_1 / "unet" / "config.json"
    assert hub.snapshot_of(path) == COMMIT_1
    assert hub.snapshot_of(tmp_path / "x" / "config.json") is None


DEAD_HUB = [
    (["generate", "a cat", "--model", "tiny", "--concept", "sd-concepts-library/line-art"], "learned_embeds"),
    (["generate", "a cat", "--model", "someone/not-cached"], "model_index.json"),
    (["generate", "a cat", "--model", "tiny", "--loss", "clip=a watercolor"], "config.json"),
    (["generate", "a cat", "--model", "tiny", "--loss", "blue", "--loss-decoder", "tiny"], "config.json"),
    (["concepts", "inspect", "sd-concepts-library/line-art"], "learned_embeds"),
    (["run", str(ROOT / "concepts" / "five_styles.toml"), "--model", "tiny"], "learned_embeds"),
]


@pytest.mark.parametrize("args, missing", DEAD_HUB)
def test_unreachable_hub_fails_fast_with_one_line(args, missing, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME")}
    # not offline mode: the hub is simply not there (connection refused), and the cache is empty
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    out = [] if args[0] == "concepts" else ["--out", str(tmp_path / "out")]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sd_styles", *args, *out], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    took = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(lines) == 1, proc.stderr
    assert missing in lines[0] and "cannot be reached" in lines[0] and "127.0.0.1:9" in lines[0]
    assert "download it once online" in lines[0] or "--model tiny" in lines[0]
    assert took < 10, f"{took:.1f} s"
    assert not (tmp_path / "out").exists()


def test_probe_is_made_once_per_process(monkeypatch):
    from huggingface_hub.utils import get_session

    calls = []
    session = get_session()
    monkeypatch.setattr(type(session), "head", lambda self, *a, **k: calls.append(a) or (_ for _ in ()).throw(
        OSError("refused")))
    monkeypatch.setattr(hub, "offline_mode", lambda: False)
    hub.hub_reachable.cache_clear()
    try:
        assert hub.local_only() and hub.local_only() and not hub.hub_reachable()
        assert len(calls) == 1
    finally:
        hub.hub_reachable.cache_clear()


# --- revisions: recorded from the hub cache, pinned by rerun ---------------------------------------------------

def _snapshot(cache: Path, repo: str, commit: str, fill) -> Path:
    folder = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    folder.parent.mkdir(parents=True, exist_ok=True)
    fill(folder)
    return folder


def _point_main(cache: Path, repo: str, commit: str) -> None:
    refs = cache / f"models--{repo.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(commit)


def _cli(args, cache: Path, cwd: Path) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "sd_styles", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.slow
def test_hub_revisions_are_recorded_and_rerun_pins_them(tiny_dir, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from sd_styles.metadata import read_document

    cache = tmp_path / "hub"
    model, concept = "someone/tiny-sd", "someone/ink-style"
    _snapshot(cache, model, COMMIT_1, lambda f: shutil.copytree(tiny_dir, f))

    def newer_model(folder: Path) -> None:  # the same model with other UNet weights: other pixels
        shutil.copytree(tiny_dir, folder)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.05)
        unet.save_pretrained(folder / "unet")

    _snapshot(cache, model, COMMIT_2, newer_model)
    vectors = [torch.randn(32, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    for commit, vec in zip((COMMIT_1, COMMIT_2), vectors):
        _snapshot(cache, concept, commit, lambda f, v=vec: (f.mkdir(), save_file({"<ink>": v}, f / "learned_embeds.safetensors")))
    _point_main(cache, model, COMMIT_1)
    _point_main(cache, concept, COMMIT_1)

    common = ["--steps", "2", "--seed", "7", "--device", "cpu"]
    [first] = _cli(["generate", "a cat in <ink>", "--model", model, "--concept", concept, *common,
                    "--out", str(tmp_path / "a")], cache, tmp_path)
    recipe = read_document(first)["recipe"]
    assert recipe["model_revision"] == COMMIT_1            # was None: diffusers configs carry no _commit_hash
    assert recipe["concepts"][0]["revision"] == COMMIT_1

    _point_main(cache, model, COMMIT_2)                     # the hub moved on
    _point_main(cache, concept, COMMIT_2)
    [again] = _cli(["rerun", first, "--out", str(tmp_path / "b")], cache, tmp_path)
    [newest] = _cli(["generate", "a cat in <ink>", "--model", model, "--concept", concept, *common,
                     "--out", str(tmp_path / "c")], cache, tmp_path)
    redone, latest = read_document(again)["recipe"], read_document(newest)["recipe"]
    assert redone == recipe                                 # pinned: model and concept at COMMIT_1
    assert latest["model_revision"] == COMMIT_2 and latest["concepts"][0]["revision"] == COMMIT_2
    assert latest["concepts"][0]["sha256"] != recipe["concepts"][0]["sha256"]
    from PIL import Image

    from helpers import pixel_diff
    assert pixel_diff(Image.open(first), Image.open(again)) == 0
    assert pixel_diff(Image.open(first), Image.open(newest)) > 0


def test_recipes_without_hub_concepts_keep_their_digest():
    from sd_styles.recipe import ConceptRef, Recipe

    plain = Recipe(prompt="a <x>", concepts=(ConceptRef("/tmp/x.pt", "<x>", "ab" * 32),))
    assert "revision" not in plain.to_dict()["concepts"][0]      # file concepts: no new key, same digest as before
    pinned = Recipe(prompt="a <x>", concepts=(ConceptRef("org/x", "<x>", "ab" * 32, COMMIT_1),))
    assert pinned.to_dict()["concepts"][0]["revision"] == COMMIT_1
    assert Recipe.from_dict(json.loads(json.dumps(pinned.to_dict()))) == pinned
