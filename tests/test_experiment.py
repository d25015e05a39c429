"""Experiments: the TOML file, `sd-styles run` end to end on the tiny model, resume, `--seeds`, `rerun`."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import pixel_diff
from PIL import Image
from sd_parsers import ParserManager

from sd_styles.cli import main
from sd_styles.errors import BadInput
from sd_styles.experiment import load_experiment, parse_experiment, with_seeds
from sd_styles.losses import BUILTIN_LOSSES
from sd_styles.metadata import read_document, read_recipe

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [11, 22, 33, 44, 55]
DEFAULT_FIVE = ["gta5-artwork", "moeb-style", "line-art", "dr-strange", "hitokomoru-style-nao"]


def write_styles(folder: Path, n: int = 5) -> list[str]:
    """n 32-wide embeddings (the tiny text encoder's width) as sd-concepts style files; returns file names."""
    names = []
    for i in range(n):
        vector = torch.randn(32, generator=torch.Generator().manual_seed(i))
        torch.save({f"<style-{i}>": vector}, folder / f"style{i}.pt")
        names.append(f"style{i}.pt")
    return names


def write_experiment(folder: Path, model: Path | str, concepts: list[str], seeds: list[int], *,
                     name: str = "five", steps: int = 2, guided: bool = True) -> Path:
    """An experiment file next to its concept files (relative paths), 64x64 on the tiny model."""
    styles = "".join(f'\n[[styles]]\nconcept = "{c}"\nseed = {s}\n' for c, s in zip(concepts, seeds))
    guidance = '\n[guidance]\nloss = "blue"\nscale = 100\n' if guided else ""
    text = (f'name = "{name}"\nmodel = "{Path(model).as_posix()}"\n'
            f'prompt = "a mouse, wearing a top hat: in the style of {{style}}"\n'
            f'negative_prompt = "blurry, low quality"\nsteps = {steps}\nguidance_scale = 7.5\n'
            f'width = 64\nheight = 64\nscheduler = "lms"\n{styles}{guidance}')
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*argv: str) -> tuple[int, list[str]]:
    """`sd-styles ...` in this process; returns the exit code and the stdout lines."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(list(argv))
    return code, buffer.getvalue().splitlines()


def cells_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if p.name != "grid.png")


# --- the experiment file -------------------------------------------------------------------------------

def minimal(**changes) -> dict:
    return {"prompt": "a cat in the style of {style}", "styles": [{"concept": "x.pt", "seed": 1}], **changes}


@pytest.mark.parametrize("data, message", [
    (minimal(colour="red"), "unknown key 'colour'; allowed: name, model, prompt"),
    (minimal(styles=[{"concept": "x", "seed": 1, "sed": 2}]), "unknown key 'styles[0].sed'; allowed: concept, seed"),
    (minimal(guidance={"loss": "blue", "scael": 2}), "unknown key 'guidance.scael'; allowed: loss, scale"),
    (minimal(steps="50"), "steps must be an integer, got '50'"),
    (minimal(steps=0), "steps must be an integer from 1 to 1000"),
    (minimal(guidance_scale=True), "guidance_scale must be a number"),
    (minimal(width=500), "width must be a positive multiple of 8"),
    (minimal(scheduler="k_lms"), "unknown scheduler 'k_lms'; allowed: lms, ddim"),
    (minimal(styles=[{"concept": "x", "seed": "1"}]), "styles[0].seed must be an integer"),
    (minimal(styles=[{"concept": "x", "seed": -1}]), "styles[0].seed must be an integer from 0"),
    (minimal(styles=[{"seed": 1}]), "styles[0] is missing required key 'concept'"),
    (minimal(styles=[]), "styles is empty"),
    ({"styles": [{"concept": "x", "seed": 1}]}, "missing required key 'prompt'"),
    ({"prompt": "a {style}"}, "missing required key 'styles'"),
    (minimal(prompt="a cat"), "prompt must contain {style}"),
    (minimal(name="../up"), "name '../up' must be a folder name"),
    (minimal(guidance={"scale": 2}), "guidance is missing required key 'loss'"),
    (minimal(guidance={"loss": "nope"}), "unknown loss 'nope'; built-in: blue"),
    (minimal(guidance={"loss": [{"scale": 2}]}), "guidance.loss[0] is missing required key 'name'"),
    (minimal(guidance={"loss": 3}), "guidance.loss must be a name"),
    (minimal(guidance={"loss": "blue", "every": 0}), "every must be an integer >= 1"),
    (minimal(guidance={"loss": "blue", "decoder": "nope"}), "decoder"),
])
def test_bad_experiment_is_one_line_naming_the_key(data, message):
    with pytest.raises(BadInput) as err:
        parse_experiment(data, where="exp.toml")
    text = str(err.value)
    assert text.startswith("exp.toml: ") and message in text and "\n" not in text


def test_full_experiment_parses():
    exp = parse_experiment(minimal(
        styles=[{"concept": "a", "seed": 5}, {"concept": "b", "seed": 5, "token": "<b>"}],  # duplicate seeds: fine
        guidance={"loss": [{"name": "blue", "scale": 50}, "warm:20", {"name": "contrast"}], "scale": 7, "every": 2,
                  "decoder": "linear", "start": 0.1, "end": 0.8}))
    assert [s.seed for s in exp.styles] == [5, 5] and exp.styles[1].token == "<b>"
    g = exp.guidance
    assert [(t.name, t.scale) for t in g.losses] == [("blue", 50.0), ("warm", 20.0), ("contrast", 7.0)]
    assert (g.every, g.decoder, g.start, g.end) == (2, "linear", 0.1, 0.8)
    assert exp.kinds == ("plain", "guided")


def test_relative_concepts_resolve_next_to_the_file(tmp_path):
    write_styles(tmp_path, 1)
    path = write_experiment(tmp_path, "tiny", ["style0.pt", "sd-concepts-library/gta5-artwork"], [1, 2])
    exp = load_experiment(path)
    assert exp.styles[0].concept == str((tmp_path / "style0.pt").resolve())
    assert exp.styles[1].concept == "sd-concepts-library/gta5-artwork"  # a hub id stays as given
    assert exp.name == "five" and exp.model == "tiny" and (exp.width, exp.height) == (64, 64)


def test_with_seeds_needs_one_per_style():
    exp = parse_experiment(minimal(styles=[{"concept": "a", "seed": 1}, {"concept": "b", "seed": 2}]))
    assert [s.seed for s in with_seeds(exp, [7, 8]).styles] == [7, 8]
    with pytest.raises(BadInput, match="gives 3 seed"):
        with_seeds(exp, [1, 2, 3])


@pytest.mark.parametrize("seeds", ["1,2", "1,2,3,4,5,6", "1,,3,4,5", "1,2,x,4,5"])
def test_wrong_seeds_exit_2(seeds, capsys):
    try:
        # tiny_demo: five styles and no hub concepts, so the seeds are what fails (offline, a hub concept would first)
        code = main(["run", str(ROOT / "concepts" / "tiny_demo.toml"), "--seeds", seeds])
    except SystemExit as stop:  # argparse type errors
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "seed" in err


def test_five_styles_file_is_the_classic_assignment():
    exp = load_experiment(ROOT / "concepts" / "five_styles.toml")
    assert [s.concept for s in exp.styles] == [f"sd-concepts-library/{n}" for n in DEFAULT_FIVE]
    assert len({s.seed for s in exp.styles}) == 5
    assert exp.guidance is not None
    names = {t.name.partition("=")[0].partition(":")[0] for t in exp.guidance.losses}
    assert names <= set(BUILTIN_LOSSES) and not names & {"red", "green", "blue"}


# --- a five-style run on the tiny model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def five_run(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("five")
    toml = write_experiment(folder, tiny_dir, write_styles(folder), SEEDS)
    code, lines = run_cli("run", str(toml), "--out", str(folder / "out"))
    assert code == 0
    return SimpleNamespace(toml=toml, out=folder / "out", cells=folder / "out" / "five", stdout=lines)


def test_run_writes_cells_grid_manifest_and_export(five_run):
    cells = cells_in(five_run.cells)
    assert len(cells) == 10
    manifest = json.loads((five_run.cells / "manifest.json").read_text())
    entries = manifest["cells"]
    assert [(e["kind"], e["seed"]) for e in entries] == [("plain", s) for s in SEEDS] + [("guided", s) for s in SEEDS]
    for e in entries:
        doc = read_document(five_run.cells / e["file"])
        assert doc["digest"] == e["digest"]
        assert (e["final_loss"] is None) == (e["kind"] == "plain")
        assert e["token"] == f"<style-{e['column']}>" and e["loss"] == (None if e["kind"] == "plain" else "blue:100")
    with Image.open(five_run.cells / "grid.png") as grid:
        assert grid.width >= 5 * 256 and grid.height >= 2 * 256
    blog = five_run.cells / "blog"
    assert len(list(blog.glob("*.jpg"))) == 11 and (blog / "post.md").is_file()
    assert manifest["grid"] == "grid.png" and len(manifest["export"]) == 12
    # stdout: exactly the files written, one per line, all of them existing
    written = [Path(line) for line in five_run.stdout]
    assert all(p.is_file() for p in written)
    exported = {five_run.cells / name for name in manifest["export"]}
    assert len(written) == len(set(written)) == 10 + 2 + 12
    assert set(written) == set(cells) | {five_run.cells / "grid.png", five_run.cells / "manifest.json"} | exported


def test_sd_parsers_reads_every_cell(five_run):
    parser = ParserManager()
    for path in cells_in(five_run.cells):
        recipe = read_recipe(path)
        info = parser.parse(path)
        params = info.samplers[0].parameters
        assert str(info.prompts[0]) == recipe.prompt and "<style-" in recipe.prompt
        assert str(info.negative_prompts[0]) == "blurry, low quality"
        assert int(params["seed"]) == recipe.seed
        assert int(params["steps"]) == recipe.steps == 2
        assert float(params["cfg_scale"]) == recipe.cfg == 7.5


def test_run_again_skips_finished_cells(five_run):
    before = {p: p.stat().st_mtime_ns for p in cells_in(five_run.cells)}
    code, lines = run_cli("run", str(five_run.toml), "--out", str(five_run.out))
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in cells_in(five_run.cells)} == before
    assert not set(map(Path, lines)) & set(before)  # only grid, export and manifest were written again


@pytest.mark.parametrize("kind", ["plain", "guided"])
def test_rerun_reproduces_a_cell_rendered_in_a_batch_exactly(five_run, tmp_path, kind):
    """A stacked cell rerun alone is padded to its recorded call shape, so it gets the same bits."""
    [original] = sorted(five_run.cells.glob(f"03-*-{kind}-*.png"))
    code, lines = run_cli("rerun", str(original), "--out", str(tmp_path))
    assert code == 0 and len(lines) == 1
    assert pixel_diff(Image.open(lines[0]), Image.open(original)) == 0
    assert read_document(lines[0])["loss_history"] == read_document(original)["loss_history"]


# --- rerun and --seeds on a one-style experiment ----------------------------------------------------------

@pytest.fixture(scope="module")
def one_style(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    toml = write_experiment(folder, tiny_dir, write_styles(folder, 1), [7], name="one")
    code, lines = run_cli("run", str(toml), "--out", str(folder / "out"))
    assert code == 0
    return SimpleNamespace(folder=folder, toml=toml, out=folder / "out", cells=cells_in(folder / "out" / "one"))


@pytest.mark.parametrize("kind", ["plain", "guided"])
def test_rerun_reproduces_a_cell_exactly(one_style, kind):
    [original] = [p for p in one_style.cells if f"-{kind}-" in p.name]
    code, lines = run_cli("rerun", str(original), "--out", str(one_style.folder / f"rerun-{kind}"))
    assert code == 0 and len(lines) == 1
    again = Path(lines[0])
    assert read_document(again)["digest"] == read_document(original)["digest"]
    assert read_document(again)["loss_history"] == read_document(original)["loss_history"]
    assert pixel_diff(Image.open(again), Image.open(original)) == 0


def test_seeds_option_changes_only_the_seeds(one_style):
    code, lines = run_cli("run", str(one_style.toml), "--out", str(one_style.out), "--seeds", "777")
    assert code == 0
    new_cells = [Path(p) for p in lines if Path(p).suffix == ".png" and Path(p).name != "grid.png"]
    assert len(new_cells) == 2
    old = {read_recipe(p).guidance is not None: read_recipe(p).to_dict() for p in one_style.cells}
    for path in new_cells:
        recipe = read_recipe(path)
        assert recipe.seed == 777
        assert {**recipe.to_dict(), "seed": 7} == old[recipe.guidance is not None]


def test_missing_concept_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import sd_styles.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load when a concept is missing")

    monkeypatch.setattr(sd_styles.models, "load_model", no_load)
    toml = write_experiment(tmp_path, "tiny", ["missing.pt"], [1], guided=False)
    code, lines = run_cli("run", str(toml), "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == []
    assert len(err) == 1 and "missing.pt" in err[0]
