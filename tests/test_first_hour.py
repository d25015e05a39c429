"""A new user's first hour: the README's main command offline, the command-line contract, truthful outputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from sd_parsers import ParserManager

from sd_styles.cli import main
from sd_styles.metadata import RECIPE_KEY, read_document, save_png
from sd_styles.recipe import Guidance, LossTerm, Recipe

ROOT = Path(__file__).resolve().parents[1]


def first_code_block(markdown: str) -> str:
    return re.search(r"```bash\n(.*?)```", markdown, re.S).group(1)


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sd_styles", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load weights fails the test: errors must come before."""
    import sd_styles.models
    import sd_styles.reproduce  # imported now, so it binds the real load_model (restored after the test)

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not load before this error")

    monkeypatch.setattr(sd_styles.models, "load_model", refuse)
    monkeypatch.setattr(sd_styles.reproduce, "load_model", refuse)


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- the first run -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_readme_main_command_runs_offline_on_a_fresh_clone(tmp_path):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    block = first_code_block((clone / "README.md").read_text(encoding="utf-8"))
    command = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")][-1]
    assert "sd-styles run concepts/tiny_demo.toml" in command
    args = command.split("sd-styles", 1)[1].split()                 # after `pip install -e . &&`
    empty = tmp_path / "empty-hf-home"                                # nothing cached, and offline
    proc = cli(*args, cwd=clone, env={"PYTHONPATH": str(clone), "HF_HOME": str(empty), "HF_HUB_CACHE": str(empty)})
    assert proc.returncode == 0, proc.stderr
    folder = clone / "outputs" / "tiny-demo"
    cells = sorted(p for p in folder.glob("*.png") if p.name != "grid.png")
    assert len(cells) == 10 and (folder / "grid.png").is_file() and (folder / "manifest.json").is_file()
    written = {(clone / p).resolve() for p in proc.stdout.split()}
    expected = {p.resolve() for p in [*cells, folder / "grid.png", folder / "manifest.json", folder / "blog" / "post.md"]}
    assert expected <= written
    post = (folder / "blog" / "post.md").read_text(encoding="utf-8")
    assert len(list((folder / "blog").glob("*.jpg"))) == 11
    # the blog's prompt line shows the prompts as rendered, never the {style} template
    assert "{style}" not in post and "in the style of &lt;random-demo-1&gt;" in post
    doc = read_document(cells[0])
    assert doc["recipe"]["model"] == "tiny" and doc["recipe"]["concepts"][0]["source"].startswith("demo:")


def test_demo_styles_are_deterministic_32_wide_and_labelled_random():
    from sd_styles.concepts import read_concept
    from sd_styles.demo_concepts import demo_sources

    files = [read_concept(s) for s in demo_sources()]
    assert [f.token for f in files] == [f"<random-demo-{i}>" for i in range(1, 6)]
    assert {f.embedding.widths["text_encoder"] for f in files} == {32}
    assert len({f.sha256 for f in files}) == 5
    assert read_concept("demo:random-1").sha256 == files[0].sha256
    # the same bytes on every machine and run (a CPU generator with a fixed seed): recipes and resume rely on it
    assert files[1].sha256 == "8532c6acac45ad3b6590842d1353b2264fb8cae6372ad2fbd9ed770d09b50fd1"
    text = " ".join((ROOT / "concepts" / "tiny_demo.toml").read_text(encoding="utf-8").replace("#", " ").split())
    assert "five built-in RANDOM demo styles" in text and 'model = "tiny"' in text


def test_demo_style_loads_into_the_tiny_model(tiny_model):
    from sd_styles.concepts import add_concept, remove_concept

    c = add_concept(tiny_model, "demo:random-3")
    try:
        assert (c.token, c.width) == ("<random-demo-3>", 32)
    finally:
        remove_concept(tiny_model, c.token)


def test_readme_says_how_to_get_the_cpu_torch_first():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme


def test_error_text_is_cut_only_at_whole_words():
    from sd_styles.errors import one_line

    text = "The specified revision does not exist on the hub. " + "Another long sentence follows here " * 20
    short = one_line(text, limit=120)
    assert short == "The specified revision does not exist on the hub."
    words = one_line("word " * 200, limit=50)
    assert words.endswith(" ...") and all(w == "word" for w in words[:-4].split())
    assert "\n" not in one_line("two\nlines")


# --- the contract ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["generate", "a cat", "--model", "tiny", "--steps", "100000"],
    ["generate", "a cat", "--model", "tiny", "--cfg", "-1"],
    ["generate", "a cat", "--model", "tiny", "--concept", "WIDE"],
])
def test_bad_values_fail_before_the_model_loads(argv, tmp_path, capsys, no_model_load):
    wide = tmp_path / "wide.pt"
    torch.save({"<wide>": torch.randn(768)}, wide)
    argv = [str(wide) if a == "WIDE" else a for a in argv]
    assert exit_code([*argv, "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert "Loading" not in line


def test_wrong_width_is_read_from_a_model_folders_config(tiny_dir, tmp_path, capsys, no_model_load):
    wide = tmp_path / "wide.pt"
    torch.save({"<wide>": torch.randn(768)}, wide)
    assert exit_code(["generate", "a <wide>", "--model", str(tiny_dir), "--concept", str(wide)]) == 2
    line = one_error_line(capsys)
    assert "768-wide" in line and "32-wide text encoder" in line


@pytest.mark.parametrize("command", ["generate", "rerun", "run"])
def test_out_pointing_at_a_file_exits_2_before_loading(command, tmp_path, capsys, no_model_load):
    image = save_png(Image.new("RGB", (8, 8)), tmp_path / "in.png", Recipe(prompt="a cat", model="tiny", width=64,
                                                                          height=64, steps=1))
    target = tmp_path / "taken"
    target.write_text("a file")
    argv = {"generate": ["generate", "a cat", "--model", "tiny"], "rerun": ["rerun", str(image)],
            "run": ["run", str(ROOT / "concepts" / "tiny_demo.toml")]}[command]
    assert exit_code([*argv, "--out", str(target)]) == 2
    assert "is a file" in one_error_line(capsys)


def _png_with_recipe(path: Path, recipe_dict: dict) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps({"format": 1, "recipe": recipe_dict}))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def _tiny_recipe(**changes) -> dict:
    return {**Recipe(prompt="a cat", model="tiny", width=64, height=64, steps=1).to_dict(), **changes}


@pytest.mark.parametrize("changes, words", [
    ({"guidance": {"losses": [{"name": "blue", "scale": "abc"}], "every": 1, "start": 0, "end": 1,
                   "decoder": "vae"}}, "abc"),
    ({"prompt": 123}, "prompt must be a string"),
    ({"steps": 100000}, "steps"),
    ({"guidance": {"losses": [{"name": "blue", "scale": 1}], "every": 1, "start": 0, "end": 1,
                   "decoder": "nowhere"}}, "loss decoder"),
])
def test_rerun_checks_the_whole_recipe_first(changes, words, tmp_path, capsys, no_model_load):
    image = _png_with_recipe(tmp_path / "bad.png", _tiny_recipe(**changes))
    assert exit_code(["rerun", str(image), "--out", str(tmp_path / "o")]) == 2
    assert words in one_error_line(capsys)


def test_run_with_two_styles_sharing_a_token_says_how_to_fix_it(tmp_path, capsys, no_model_load):
    toml = tmp_path / "twins.toml"
    toml.write_text('model = "tiny"\nprompt = "a {style}"\n'
                    '[[styles]]\nconcept = "demo:random-1"\nseed = 1\n'
                    '[[styles]]\nconcept = "demo:random-1"\nseed = 2\n', encoding="utf-8")
    assert exit_code(["run", str(toml), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert "two concepts want the same token" in line and "token =" in line and "load_styles" not in line


def test_debug_is_accepted_anywhere(tmp_path, capsys):
    assert exit_code(["generate", "a cat", "--model", str(tmp_path / "nope"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "nope" in err
    assert exit_code(["generate", "a cat", "--debug", "--model", str(tmp_path / "nope")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_help_shows_defaults_and_explains_every_option(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: argparse wraps at hyphens otherwise
    texts = {}
    for command in ("generate", "run", "rerun", "info"):
        assert exit_code([command, "--help"]) == 0
        texts[command] = " ".join(capsys.readouterr().out.split())
    g = texts["generate"]
    for shown in ("(default: 50)", "(default: 7.5)", "(default: lms)", "(default: CompVis/stable-diffusion-v1-4)",
                  "guide every K-th step (default 1)", "where to render", "weights' precision"):
        assert shown in g, shown
    assert "overrides the file's model" in texts["run"]
    assert "PNG written by sd-styles" in texts["rerun"] and "PNG written by sd-styles" in texts["info"]
    assert "--allow-loss-module" in texts["rerun"]


def test_cli_filters_only_known_harmless_warnings():
    from sd_styles import cli

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._quiet_libraries()
        assert not any(f[0] == "ignore" and f[1] is None and f[2] is Warning for f in warnings.filters), \
            "a global ignore hides everything"
        warnings.warn("something the user must see", UserWarning)
        warnings.warn("__array__ implementation doesn't accept a copy keyword, so ...", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["something the user must see"]


# --- an image must not run code -----------------------------------------------------------------------------

def _guided_recipe(loss: str) -> dict:
    g = {"losses": [{"name": loss, "scale": 10.0}], "every": 1, "start": 0.0, "end": 1.0, "decoder": "vae"}
    return _tiny_recipe(guidance=g)


def test_rerun_never_imports_a_module_named_by_the_image(tmp_path):
    image = _png_with_recipe(tmp_path / "zen.png", _guided_recipe("this:s"))
    proc = cli("rerun", str(image), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""                 # `import this` would print the Zen
    assert "--allow-loss-module this" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

    marker = tmp_path / "ran.txt"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                      "def loss(images):\n    return images.mean()\n", encoding="utf-8")
    image = _png_with_recipe(tmp_path / "evil.png", _guided_recipe("evil:loss"))
    proc = cli("rerun", str(image), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2 and not marker.exists()
    assert "--allow-loss-module evil" in proc.stderr


@pytest.mark.slow
def test_rerun_imports_an_allowed_loss_module(tmp_path):
    marker = tmp_path / "ran.txt"
    (tmp_path / "mine.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                      "def loss(images):\n    return images.mean()\n", encoding="utf-8")
    image = _png_with_recipe(tmp_path / "mine.png", _guided_recipe("mine:loss"))
    proc = cli("rerun", str(image), "--allow-loss-module", "mine", "--out", str(tmp_path / "o"), cwd=tmp_path,
               env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert proc.returncode == 0, proc.stderr
    assert marker.exists() and len(proc.stdout.split()) == 1


# --- truthful outputs -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_long_prompt_warns_once_and_is_recorded(tiny_dir, tmp_path):
    prompt = "a very long prompt " * 6                               # the byte tokenizer: one token per character
    proc = cli("generate", prompt, "--model", str(tiny_dir), "--steps", "1", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if "text encoder reads" in ln]
    assert len(warned) == 1 and "the prompt is" in warned[0]
    [path] = proc.stdout.split()
    note = read_document(path)["rendered_with"]["truncated"]["prompt"]
    assert note["limit"] == 77 and note["tokens"] > 77 and note["dropped"]
    assert read_document(path)["recipe"]["prompt"] == prompt           # the recipe keeps what was asked


def test_run_warns_once_per_long_prompt_and_records_it(tmp_path, caplog):
    from sd_styles.experiment import experiment
    from sd_styles.runner import run_experiment

    exp = experiment("a very long prompt " * 6 + "{style}", ["demo:random-1", "demo:random-2"], [1, 2],
                     name="long", model="tiny", steps=1, width=64, height=64)
    with caplog.at_level("WARNING", logger="sd_styles.truncation"):
        report = run_experiment(exp, out=tmp_path, device="cpu", progress=False)
    warned = [r for r in caplog.records if "text encoder reads" in r.getMessage()]
    assert len(warned) == 2                                          # one per distinct prompt, not per write
    for cell in report.results:
        note = read_document(cell.path)["rendered_with"]["truncated"]["prompt"]
        assert note["limit"] == 77 and note["tokens"] > 77


def test_a_prompt_line_like_the_negative_prompt_is_flattened_for_a1111_readers(tmp_path):
    prompt = "a cat\nNegative prompt: is part of the prompt\nsecond line, Negative prompt: inline"
    recipe = Recipe(prompt=prompt, negative_prompt="blurry", model="tiny", width=64, height=64, steps=1)
    path = save_png(Image.new("RGB", (64, 64)), tmp_path / "c.png", recipe)
    info = ParserManager().parse(path)                               # an independent A1111 reader
    assert str(info.negative_prompts[0]) == "blurry"
    assert "is part of the prompt" in str(info.prompts[0]) and "inline" in str(info.prompts[0])
    from sd_styles.metadata import parse_a1111_parameters                  # A1111's own line rule
    a1111_prompt, a1111_negative, _ = parse_a1111_parameters(Image.open(path).info["parameters"])
    assert a1111_negative == "blurry" and "is part of the prompt" in a1111_prompt
    assert read_document(path)["recipe"]["prompt"] == prompt           # the JSON recipe stays exact
    starts = save_png(Image.new("RGB", (64, 64)), tmp_path / "d.png",
                      Recipe(prompt="Negative prompt: a dog", model="tiny", width=64, height=64, steps=1))
    info = ParserManager().parse(starts)
    assert "a dog" in str(info.prompts[0]) and not info.negative_prompts
    inner = save_png(Image.new("RGB", (64, 64)), tmp_path / "e.png",
                     Recipe(prompt="a cat", negative_prompt="dull\nNegative prompt: grey", model="tiny", width=64,
                            height=64, steps=1))
    info = ParserManager().parse(inner)
    assert str(info.prompts[0]) == "a cat" and "grey" in str(info.negative_prompts[0])


def test_info_takes_several_images_as_json_lines(tmp_path, capsys):
    paths = [save_png(Image.new("RGB", (8, 8)), tmp_path / f"{s}.png",
                      Recipe(prompt="a cat", seed=s, model="tiny", width=64, height=64, steps=1)) for s in (1, 2)]
    assert main(["info", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    docs = [json.loads(ln) for ln in lines]
    assert [d["recipe"]["seed"] for d in docs] == [1, 2] and [d["file"] for d in docs] == list(map(str, paths))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "sd-styles info outputs/five-styles/*.png" not in readme or "JSON lines" in readme
