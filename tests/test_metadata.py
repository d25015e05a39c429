"""Image metadata: A1111 `parameters` text (format, quoting, third-party readers), JSON recipe chunk, `info`."""

from __future__ import annotations

import json
import os
import re
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
from sd_styles.schedulers import SCHEDULERS, make_scheduler

# ------------------------------------------------------------------------------------------------------------
# An independent mirror of how AUTOMATIC1111 reads a `parameters` text (written here from A1111's source, not
# from sd_styles.metadata): modules/infotext_utils.py parse_generation_parameters (re_param, unquote,
# re_imagesize, a missing "Schedule type" becomes "Automatic"), modules/sd_samplers.py
# get_sampler_and_scheduler (a schedule label folded into the sampler name is split off), and what
# "Automatic" then means: the sampler's own default scheduler (sd_samplers_kdiffusion options), else
# model_wrap.get_sigmas, the "uniform" spacing (KDiffusionSampler.get_sigmas).
A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
A1111_SCHEDULES = {"Automatic": "automatic", "Uniform": "uniform", "Karras": "karras", "Exponential": "exponential",
                   "Polyexponential": "polyexponential", "SGM Uniform": "sgm_uniform", "KL Optimal": "kl_optimal",
                   "Align Your Steps": "align_your_steps", "Simple": "simple", "Normal": "normal", "DDIM": "ddim",
                   "Beta": "beta"}
A1111_SAMPLER_DEFAULT_SCHEDULE = {  # sampler -> options['scheduler'] (None: no default; timestep samplers: n/a)
    "DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM++ 2M SDE": "exponential", "DPM++ 2S a": "karras",
    "DPM++ 3M SDE": "exponential", "Euler a": None, "Euler": None, "LMS": None, "Heun": None, "DPM2": "karras",
    "DPM2 a": "karras", "DPM fast": None, "DPM adaptive": None, "Restart": None,
    "DDIM": None, "PLMS": None, "UniPC": None}


def a1111_parse(text: str) -> dict:
    """parse_generation_parameters, as far as prompts, key/value fields and the sampler/schedule go."""
    res: dict = {}
    *lines, last = text.strip().split("\n")
    if len(A1111_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, done = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done, line = True, line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative
    for k, v in A1111_RE_PARAM.findall(last):
        if v[:1] == '"' and v[-1:] == '"':
            v = json.loads(v)
        m = A1111_RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    res.setdefault("Schedule type", "Automatic")
    return res


def a1111_effective_schedule(res: dict) -> tuple[str, str]:
    """(sampler, the schedule A1111 would sample with) from parsed fields."""
    name, schedule = res.get("Sampler") or "DPM++ 2M", A1111_SCHEDULES.get(res["Schedule type"], "automatic")
    for label, key in A1111_SCHEDULES.items():
        for option in (label, key):
            if name.endswith(" " + option):
                name, schedule = name[: -len(option) - 1], key
    assert name in A1111_SAMPLER_DEFAULT_SCHEDULE, f"A1111 does not know sampler {name!r}: it would fall back"
    if schedule == "automatic":
        schedule = A1111_SAMPLER_DEFAULT_SCHEDULE[name] or "uniform"
    return name, schedule

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
    assert lines[2].startswith("Steps: 50, Sampler: LMS, Schedule type: Automatic, CFG scale: 7.0, Seed: 101, "
                               "Size: 512x512, "
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
    fields = a1111_parse(a1111_parameters(recipe, [3.0, 1.25]))
    assert fields["Prompt"] == recipe.prompt and fields["Negative prompt"] == recipe.negative_prompt
    assert fields["Seed"] == "4242" and fields["Steps"] == "3" and float(fields["CFG scale"]) == 7.5
    assert (fields["Size-1"], fields["Size-2"]) == ("64", "48")
    assert (fields["Sampler"], fields["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert fields["Model"] == recipe.model                      # comma and colon survive quoting
    assert fields["TI hashes"] == "<gta5-artwork>: ababababab, <x>: unknown"
    assert fields["RNG"] == "CPU" and fields["Version"].startswith("sd-styles ")
    assert fields["Loss"] == "canny:200+mymod:warm:50"
    assert fields["Loss range"] == "0.1-0.9" and fields["Loss every"] == "5" and fields["Loss decoder"] == "vae"
    assert fields["Final loss"] == "1.25"
    # our own reader agrees with A1111's rules on every key
    prompt, negative, ours = parse_a1111_parameters(a1111_parameters(recipe, [3.0, 1.25]))
    assert (prompt, negative) == (fields.pop("Prompt"), fields.pop("Negative prompt"))
    assert ours == fields


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_a1111_reads_the_same_sampler_and_schedule_for_every_scheduler(scheduler):
    """Pasted into A1111, the image must sample with our sigma spacing: Karras exactly when ours is Karras."""
    text = a1111_parameters(Recipe(prompt="a cat", scheduler=scheduler))
    assert "Schedule type: " in text                            # always explicit, as A1111 writes it
    sampler, schedule = a1111_effective_schedule(a1111_parse(text))
    ours = make_scheduler(scheduler, _sd_scheduler_config())
    assert (schedule == "karras") == bool(getattr(ours.config, "use_karras_sigmas", False)), (sampler, schedule)


def _sd_scheduler_config() -> dict:
    """Stable Diffusion 1.x's scheduler config (the tiny model uses the same betas)."""
    return {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
            "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True}


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
    assert sampler.name == "DPM++ 2M" and sampler.parameters["scheduler"] == "Karras"
    # and our own reader agrees with the third-party one on everything both understand
    prompt, negative, fields = parse_a1111_parameters(Image.open(path).info[PARAMETERS_KEY])
    assert (prompt, negative, fields["Seed"], fields["Steps"]) == (
        str(info.prompts[0]), str(info.negative_prompts[0]), sampler.parameters["seed"], sampler.parameters["steps"])


def test_independent_readers_see_size_model_and_every_key(tmp_path):
    """sd-parsers and PIL's own chunk reader (no sd_styles code) find every key users rely on."""
    recipe = Recipe(prompt="a cat", negative_prompt="dog", seed=7, width=64, height=48, steps=3, cfg=6.5,
                    scheduler="euler", model="CompVis/stable-diffusion-v1-4",
                    concepts=(ConceptRef("sd-concepts-library/cat-toy", "<cat-toy>", "ab" * 32),),
                    guidance=Guidance((LossTerm("blue", 200.0),), every=2, decoder="linear"))
    path = save_png(Image.new("RGB", (64, 48), "teal"), tmp_path / "cell.png", recipe, [2.5])
    with Image.open(path) as im:
        chunks = dict(im.text)                                  # PIL's tEXt/iTXt parsing
    assert set(chunks) == {PARAMETERS_KEY, RECIPE_KEY}
    assert json.loads(chunks[RECIPE_KEY])["recipe"]["model"] == recipe.model
    info = ParserManager().parse(path)
    sampler = info.samplers[0]
    assert sampler.model.name == recipe.model                   # Model
    assert info.metadata["Size"] == "64x48"                     # Size
    assert (sampler.name, sampler.parameters["scheduler"]) == ("Euler", "Automatic")
    assert (sampler.parameters["seed"], sampler.parameters["steps"], sampler.parameters["cfg_scale"]) == ("7", "3", "6.5")
    assert (str(sampler.prompts[0]), str(sampler.negative_prompts[0])) == ("a cat", "dog")
    assert {k: info.metadata[k] for k in ("RNG", "Loss every", "Loss decoder", "Final loss")} == {
        "RNG": "CPU", "Loss every": "2", "Loss decoder": "linear", "Final loss": "2.5"}
    assert info.metadata["Version"].startswith("sd-styles ")
    # quoted values (sd-parsers 0.6 drops them): A1111's rules, applied to PIL's chunk text
    fields = a1111_parse(chunks[PARAMETERS_KEY])
    assert fields["TI hashes"] == "<cat-toy>: ababababab" and fields["Loss"] == "blue:200"
    assert (fields["Size-1"], fields["Size-2"], fields["Model"]) == ("64", "48", recipe.model)


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
