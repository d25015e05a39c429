"""Image metadata: A1111 `parameters` text (format, quoting, third-party readers), JSON recipe chunk, `info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image
from sd_parsers import ParserManager

from sd_styles.atomic import clean_stale_temps
from sd_styles.cli import main
from sd_styles.errors import BadInput
from sd_styles.metadata import (PARAMETERS_KEY, RECIPE_KEY, a1111_parameters, a1111_quote, a1111_unquote,
                                parse_a1111_parameters, read_document, read_recipe, save_png)
from sd_styles.recipe import ConceptRef, Guidance, LossTerm, Recipe

TRICKY_PROMPT = 'a mouse, wearing "a top hat": in the style of <gta5-artwork>, 8k\nsecond line: more, détails ☕'
TRICKY_NEGATIVE = "blurry, low quality: jpeg artifacts"


def tricky_recipe(**changes) -> Recipe:
    settings = dict(prompt=TRICKY_PROMPT, negative_prompt=TRICKY_NEGATIVE, seed=4242, width=64, height=48, steps=3,
                    cfg=7.5, scheduler="dpm++2m-karras", model="C:\\models\\sd, v1:5",
                    concepts=(ConceptRef("sd-concepts-library/gta5-artwork", "<gta5-artwork>", "ab" * 32),
                              ConceptRef("/tmp/x.pt", "<x>", "")),
                    guidance=Guidance((LossTerm("canny", 200.0), LossTerm("mymod:warm", 50.0)), every=5,
                                      start=0.1, end=0.9))
    return Recipe(**{**settings, **changes})


def test_parameters_text_has_a1111_layout():
    recipe = Recipe(prompt="a cat", negative_prompt="dog", seed=101, width=512, height=512, steps=50, cfg=7.0,
                    scheduler="lms", model="CompVis/stable-diffusion-v1-4")
    text = a1111_parameters(recipe)
    lines = text.split("\n")
    assert lines[0] == "a cat"
    assert lines[1] == "Negative prompt: dog"
    assert lines[2].startswith("Steps: 50, Sampler: LMS, CFG scale: 7.0, Seed: 101, Size: 512x512, "
                               "Model: CompVis/stable-diffusion-v1-4, RNG: CPU, Version: sd-styles ")
    assert "Negative prompt" not in a1111_parameters(Recipe(prompt="a cat"))  # A1111 omits an empty one


@pytest.mark.parametrize("value, quoted", [
    ("plain", "plain"), ("a, b", '"a, b"'), ("canny:200", '"canny:200"'), ("two\nlines", '"two\\nlines"'),
    ('"starts quoted"', '"\\"starts quoted\\""'), ("ünïcode, ok", '"ünïcode, ok"'),
])
def test_quote_matches_a1111_and_round_trips(value, quoted):
    assert a1111_quote(value) == quoted
    assert a1111_unquote(a1111_quote(value)) == value


def test_parameters_round_trip_through_a1111_parser():
    recipe = tricky_recipe()
    prompt, negative, fields = parse_a1111_parameters(a1111_parameters(recipe, [3.0, 1.25]))
    assert prompt == recipe.prompt and negative == recipe.negative_prompt
    assert fields["Seed"] == "4242" and fields["Steps"] == "3" and float(fields["CFG scale"]) == 7.5
    assert (fields["Size-1"], fields["Size-2"]) == ("64", "48")
    assert fields["Sampler"] == "DPM++ 2M Karras"
    assert fields["Model"] == recipe.model                      # comma and colon survive quoting
    assert fields["TI hashes"] == "<gta5-artwork>: ababababab, <x>: unknown"
    assert fields["Loss"] == "canny:200+mymod:warm:50"
    assert fields["Loss range"] == "0.1-0.9" and fields["Loss every"] == "5"
    assert fields["Final loss"] == "1.25"


def test_sd_parsers_reads_our_png(tmp_path):
    recipe = tricky_recipe()
    path = save_png(Image.new("RGB", (64, 48), "purple"), tmp_path / "cell.png", recipe, [2.0])
    info = ParserManager().parse(path)
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    sampler = info.samplers[0]
    assert str(info.prompts[0]) == recipe.prompt
    assert str(info.negative_prompts[0]) == recipe.negative_prompt
    assert int(sampler.parameters["seed"]) == recipe.seed
    assert int(sampler.parameters["steps"]) == recipe.steps
    assert float(sampler.parameters["cfg_scale"]) == recipe.cfg
    assert sampler.name == "DPM++ 2M Karras"
    # and our own reader agrees with the third-party one on everything both understand
    prompt, negative, fields = parse_a1111_parameters(Image.open(path).info[PARAMETERS_KEY])
    assert (prompt, negative, fields["Seed"], fields["Steps"]) == (
        str(info.prompts[0]), str(info.negative_prompts[0]), sampler.parameters["seed"], sampler.parameters["steps"])


def test_json_chunk_round_trips_the_recipe(tmp_path):
    recipe = tricky_recipe()
    path = save_png(Image.new("RGB", (64, 48)), tmp_path / "c.png", recipe, [3.0, 2.0],
                    rendered_with={"device": "cpu", "dtype": "float32"})
    doc = read_document(path)
    assert doc["digest"] == recipe.digest() and doc["loss_history"] == [3.0, 2.0]
    assert doc["rendered_with"] == {"device": "cpu", "dtype": "float32"}
    assert set(doc["versions"]) >= {"sd-styles", "torch", "diffusers", "transformers"}
    assert read_recipe(path) == recipe
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]  # no temp file left behind


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"not an image"), "not a readable image"),
    (lambda p: Image.new("RGB", (8, 8)).save(p), "carries no sd-styles recipe"),
])
def test_read_document_errors_are_bad_input(tmp_path, make, message):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(BadInput, match=message):
        read_document(path)


def test_truncated_png_is_not_readable(tmp_path):
    path = save_png(Image.effect_noise((64, 64), 40).convert("RGB"), tmp_path / "t.png", Recipe(prompt="x"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput):
        read_document(path)


def test_stale_temps_of_dead_processes_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".tmp-{int(dead.stdout)}-abc.png"
    mine = tmp_path / f".tmp-{os.getpid()}-def.png"
    other = tmp_path / "cell.png"
    for p in (stale, mine, other):
        p.write_bytes(b"partial")
    assert clean_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and other.exists()


def test_info_prints_the_recipe_as_json(tmp_path, capsys):
    recipe = tricky_recipe()
    path = save_png(Image.new("RGB", (64, 48)), tmp_path / "c.png", recipe, [1.0])
    assert main(["info", str(path)]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["digest"] == recipe.digest()
    assert Recipe.from_dict(doc["recipe"]) == recipe
    assert doc["recipe"]["guidance"]["losses"][0] == {"name": "canny", "scale": 200.0}


def test_info_on_an_image_without_recipe_exits_2(tmp_path, capsys):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    assert main(["info", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and RECIPE_KEY in err
