"""SDXL + refiner beyond pixels: metadata, rerun, experiments, guidance through the full VAE, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import pixel_diff
from PIL import Image
from sd_parsers import ParserManager

from sd_styles.cli import main
from sd_styles.errors import BadInput
from sd_styles.experiment import load_experiment
from sd_styles.losses import resolve_loss
from sd_styles.metadata import PARAMETERS_KEY, parse_a1111_parameters, read_recipe
from sd_styles.recipe import Guidance, LossTerm, Recipe
from sd_styles.rendering import make_recipe, render

PROMPT = "a lighthouse at dusk"
SEEDS = (0, 1, 2)


def generate(capsys, *argv) -> str:
    code = main(["generate", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    [path] = out.split()
    return path


def test_png_records_the_refiner_and_rerun_is_exact(tiny_sdxl_dir, tiny_sdxl_refiner_dir, capsys, tmp_path):
    path = generate(capsys, PROMPT, "--model", str(tiny_sdxl_dir), "--refiner", str(tiny_sdxl_refiner_dir),
                    "--refiner-switch", "0.6", "--scheduler", "euler-a", "--steps", "4", "--size", "64x48",
                    "--seed", "11", "--out", str(tmp_path / "first"))
    recipe = read_recipe(path)
    assert (recipe.refiner, recipe.refiner_switch, recipe.negative_prompt) == (str(tiny_sdxl_refiner_dir), 0.6, None)
    _, _, fields = parse_a1111_parameters(Image.open(path).info[PARAMETERS_KEY])
    assert fields["Refiner"] == str(tiny_sdxl_refiner_dir) and fields["Refiner switch at"] == "0.6"
    info = ParserManager().parse(path)  # a third-party reader still understands the whole chunk
    assert info.generator.name == "AUTOMATIC1111" and int(info.samplers[0].parameters["seed"]) == 11
    assert main(["rerun", path, "--out", str(tmp_path / "again")]) == 0
    [again] = capsys.readouterr()[0].split()
    assert read_recipe(again) == recipe
    assert pixel_diff(Image.open(again), Image.open(path)) == 0


def test_recipes_without_refiner_keep_their_digest():
    plain = Recipe(prompt="x")
    assert "refiner" not in plain.to_dict() and "refiner_switch" not in plain.to_dict()
    with_refiner = Recipe(prompt="x", refiner="r")
    assert with_refiner.to_dict()["refiner_switch"] == 0.8 and with_refiner.digest() != plain.digest()
    assert Recipe.from_dict(with_refiner.to_dict()) == with_refiner
    assert plain.batch_key() != with_refiner.batch_key()


@pytest.mark.parametrize("argv, message", [
    (["--refiner-switch", "0.5"], "needs --refiner"),
    (["--refiner", "tiny-sdxl-refiner", "--refiner-switch", "1.5"], "between 0 and 1"),
    (["--refiner", "tiny-sdxl-refiner"], "needs an SDXL base"),   # --model tiny is SD 1.x
])
def test_bad_refiner_options_exit_2_with_one_line(argv, message, capsys, tmp_path):
    code = main(["generate", "x", "--model", "tiny", "--steps", "1", "--out", str(tmp_path), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def as_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)


def test_guidance_through_the_full_vae_lowers_the_loss_on_base_and_refiner(tiny_sdxl_model):
    def recipes(guidance):
        return [make_recipe(tiny_sdxl_model, PROMPT, seed=s, steps=4, refiner_switch=0.5, guidance=guidance)
                for s in SEEDS]

    plain = render(tiny_sdxl_model, recipes(None), progress=False)
    zero = render(tiny_sdxl_model, recipes(Guidance(losses=(LossTerm("blue", 0.0),))), progress=False)
    assert [pixel_diff(a.image, b.image) for a, b in zip(zero, plain)] == [0, 0, 0]
    guided = render(tiny_sdxl_model, recipes(Guidance(losses=(LossTerm("blue", 20000.0),), decoder="vae")),
                    progress=False)
    loss = resolve_loss(LossTerm("blue"))
    before = [float(loss(as_tensor(r.image))) for r in plain]
    after = [float(loss(as_tensor(r.image))) for r in guided]
    assert all(a < 0.99 * b for a, b in zip(after, before)), (before, after)
    assert all(len(r.loss_history) == 4 for r in guided)  # 2 base steps + 2 refiner steps, all guided


SDXL_EXPERIMENT = """
name = "sdxl-refined"
model = "{model}"
refiner = "{refiner}"
refiner_switch = 0.5
prompt = "a boat by {{style}}"
steps = 3
width = 64
height = 48
scheduler = "euler"

[[styles]]
concept = "style.safetensors"
seed = 4
"""


def sdxl_concept(path):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    save_file({"clip_l": torch.randn(2, 32, generator=gen), "clip_g": torch.randn(2, 64, generator=gen)}, str(path))
    return path


def test_experiment_file_with_refiner_runs_and_reruns_exactly(tiny_sdxl_dir, tiny_sdxl_refiner_dir, tmp_path, capsys):
    sdxl_concept(tmp_path / "style.safetensors")
    toml = tmp_path / "exp.toml"
    toml.write_text(SDXL_EXPERIMENT.format(model=tiny_sdxl_dir, refiner=tiny_sdxl_refiner_dir), encoding="utf-8")
    exp = load_experiment(toml)
    assert (exp.refiner, exp.refiner_switch, exp.negative_prompt) == (str(tiny_sdxl_refiner_dir), 0.5, None)
    code = main(["run", str(toml), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    if code == 2 and "SDXL embedding" in err and "not supported" in err:
        pytest.skip("SDXL concepts ({clip_l, clip_g}) are not loadable on this branch yet")
    assert code == 0, err
    [cell] = [p for p in out.split() if p.endswith(".png") and "grid" not in p and "/blog/" not in p]
    recipe = read_recipe(cell)
    assert recipe.refiner == str(tiny_sdxl_refiner_dir) and recipe.refiner_switch == 0.5
    assert main(["rerun", cell, "--out", str(tmp_path / "again")]) == 0
    [again] = capsys.readouterr()[0].split()
    assert pixel_diff(Image.open(again), Image.open(cell)) == 0


@pytest.mark.parametrize("line, message", [
    ('refiner_switch = 0.5', "needs refiner"),
    ('refiner = "x/y"\nrefiner_switch = 1.0', "between 0 and 1"),
    ('refiner = " "', "refiner is empty"),
])
def test_bad_refiner_keys_in_experiment_files(line, message, tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text(f'prompt = "a {{style}}"\n{line}\n[[styles]]\nconcept = "c"\nseed = 1\n', encoding="utf-8")
    with pytest.raises(BadInput, match=message):
        load_experiment(toml)


def _cache_repo(cache, repo: str, folder, commit: str) -> None:
    """Lay a model folder out as huggingface_hub's cache does (refs/main -> snapshots/COMMIT/...)."""
    import shutil

    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


def test_hub_ids_load_from_the_cache_and_share_identical_parts(tiny_sdxl_dir, tiny_sdxl_refiner_dir, tmp_path):
    import os
    import subprocess
    import sys

    cache = tmp_path / "hub"
    _cache_repo(cache, "someone/sdxl-base", tiny_sdxl_dir, "a" * 40)
    _cache_repo(cache, "someone/sdxl-refiner", tiny_sdxl_refiner_dir, "b" * 40)
    script = (
        "from sd_styles.models import load_model\n"
        "m = load_model('someone/sdxl-base', device='cpu', refiner='someone/sdxl-refiner')\n"
        "r = m.refiner\n"
        "print(m.family, r.family, r.pipe.vae is m.pipe.vae, r.pipe.text_encoder_2 is m.pipe.text_encoder_2)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["sdxl", "sdxl", "True", "True"]  # digests read from the cached snapshots
