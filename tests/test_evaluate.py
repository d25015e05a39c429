"""`sd-styles evaluate` equals CLIP-I / CLIP-T / DINO computed directly with transformers, on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import build_tiny_scorers
from PIL import Image

PROMPT = "a photo of <h12-cat> on the beach"


@pytest.fixture(scope="module")
def tiny_scorers(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random CLIP (with processor) and a tiny random DINO-style ViT, saved as model folders."""
    return build_tiny_scorers(tmp_path_factory.mktemp("scorers"))


def pictures(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def direct(clip_dir: Path, dino_dir: Path, gen: list, ref: list, text: str) -> dict:
    """The metrics written out with transformers alone."""
    from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, ViTModel

    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model(**proc(text=[text], images=gen + ref, return_tensors="pt", padding=True))
        img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        g, r = img[:len(gen)], img[len(gen):]
        vit, vproc = ViTModel.from_pretrained(dino_dir).eval(), AutoImageProcessor.from_pretrained(dino_dir)
        cls = vit(**vproc(images=gen + ref, return_tensors="pt")).last_hidden_state[:, 0]
        cls = cls / cls.norm(dim=-1, keepdim=True)
    clip_i = np.mean([float(a @ b) for a in g for b in r])
    dino = np.mean([float(a @ b) for a in cls[:len(gen)] for b in cls[len(gen):]])
    return {"clip_i": clip_i, "clip_t": float((g @ txt[0]).mean()), "dino": dino}


def test_cli_equals_a_direct_computation(tiny_scorers, tmp_path, capsys):
    from sd_styles.cli import main

    clip_dir, dino_dir = tiny_scorers
    gen, ref = pictures(tmp_path / "gen", 3, 0), pictures(tmp_path / "ref", 2, 1)
    (gen / "notes.txt").write_text("skipped")
    code = main(["evaluate", "--images", str(gen), "--reference", str(ref), "--prompt", PROMPT,
                 "--clip", str(clip_dir), "--dino", str(dino_dir), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    got = json.loads(out)
    assert got["clip_t_prompt"] == "a photo of on the beach"  # the placeholder removed, as the TI paper does
    load = lambda folder: [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]  # noqa: E731
    want = direct(clip_dir, dino_dir, load(gen), load(ref), "a photo of on the beach")
    for key in ("clip_i", "clip_t", "dino"):
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    assert (got["n_images"], got["n_reference"]) == (3, 2)
    assert got["clip_model"] == str(clip_dir) and got["dino_model"] == str(dino_dir)
    assert set(got["protocol"]) == {"clip_i", "clip_t", "dino", "scale"}


def test_placeholder_replacement_and_no_dino(tiny_scorers, tmp_path):
    from sd_styles.evaluation import clip_t_text, evaluate

    assert clip_t_text("a <cat-toy> and <b>", None, None) == "a and"
    assert clip_t_text("a sks_1 dog", "sks", "the") == "a the dog"
    gen, ref = pictures(tmp_path / "g", 2, 2), pictures(tmp_path / "r", 2, 3)
    got = evaluate(gen, ref, PROMPT, clip=str(tiny_scorers[0]), dino=None, replace_with="cat", device="cpu")
    assert got["dino"] is None and got["clip_t_prompt"] == "a photo of cat on the beach"


@pytest.mark.parametrize("case,message", [
    ("empty", "no readable images"), ("missing", "not a folder"), ("same", "same folder"),
    ("clip-is-vit", "expected a 'clip' model"), ("dino-is-clip", "expected a 'vit' model"),
    ("only-token", "only the placeholder"), ("no-model", "no such folder"),
])
def test_bad_input_exits_2_with_one_line(tiny_scorers, tmp_path, capsys, case, message):
    from sd_styles.cli import main

    clip_dir, dino_dir = map(str, tiny_scorers)
    gen, ref = pictures(tmp_path / "gen", 1, 0), pictures(tmp_path / "ref", 1, 1)
    (tmp_path / "empty").mkdir()
    args = {"--images": str(gen), "--reference": str(ref), "--prompt": PROMPT, "--clip": clip_dir, "--dino": dino_dir}
    changes = {"empty": {"--images": str(tmp_path / "empty")}, "missing": {"--reference": str(tmp_path / "nope")},
               "same": {"--reference": str(gen)}, "clip-is-vit": {"--clip": dino_dir},
               "dino-is-clip": {"--dino": clip_dir}, "only-token": {"--prompt": "<h12-cat>"},
               "no-model": {"--clip": str(tmp_path / "no-clip")}}
    args.update(changes[case])
    code = main(["evaluate", *[x for kv in args.items() for x in kv]])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("sd-styles")]
    assert code == 2 and captured.out == "" and len(lines) == 1 and message in lines[0], captured.err
