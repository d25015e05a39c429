"""Compare styles and PNG info tabs without a browser: the same files as `sd-styles run`, safe re-rendering."""

from __future__ import annotations

import json
import types
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from sd_styles.errors import BadInput
from sd_styles.recipe import ConceptRef, Guidance, LossTerm, Recipe

from app_helpers import tiny_embedding
from helpers import pixel_diff


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    pytest.importorskip("gradio")
    from sd_styles.app_events import Handlers
    from sd_styles.catalog import load_catalog
    from sd_styles.models import load_model

    model = load_model("tiny", device="cpu", dtype="fp32")
    return Handlers(model, tmp_path_factory.mktemp("compare-out"), load_catalog())


def test_compare_makes_what_sd_styles_run_makes(handlers, tmp_path, capsys):
    from sd_styles.cli import main

    embs = [tiny_embedding(tmp_path / f"style{i}.bin", f"<style-{i}>", seed=i) for i in (1, 2)]
    prompt = "a mouse in a top hat in the style of {style}"
    request = types.SimpleNamespace(session_hash="cmp")
    steps = list(handlers.compare(prompt, [], "5, 6", 2, 7.5, 64, 64, "lms", "blue", "", 300, 1, "linear",
                                  [str(e) for e in embs], request=request))
    grid, cells, zipped, status = steps[-1]
    assert "Done: 4 cells" in status and len(cells) == 4
    assert [c[1] for c in cells] == ["<style-1> · plain · seed 5", "<style-2> · plain · seed 6",
                                     "<style-1> · guided · seed 5", "<style-2> · guided · seed 6"]

    toml = tmp_path / "cmp.toml"
    toml.write_text(f'''name = "compare"
model = "tiny"
prompt = "{prompt}"
steps = 2
width = 64
height = 64
[[styles]]
concept = "{embs[0]}"
seed = 5
[[styles]]
concept = "{embs[1]}"
seed = 6
[guidance]
loss = "blue"
scale = 300
every = 1
decoder = "linear"
''')
    assert main(["run", str(toml), "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    cli = tmp_path / "cli" / "compare"
    for path, _ in cells:  # same cell names (the digest differs: the app keeps its own copy of each upload)
        [twin] = cli.glob(Path(path).name.rsplit("-", 1)[0] + "-*.png")
        assert pixel_diff(Image.open(path), Image.open(twin)) == 0
    assert pixel_diff(Image.open(grid), Image.open(cli / "grid.png")) == 0
    manifest = json.loads((cli / "manifest.json").read_text())
    with zipfile.ZipFile(zipped) as zf:
        names = set(zf.namelist())
    assert {"grid.png", "blog/post.md", "blog/grid.jpg"} <= names and len(names) == len(manifest["export"]) + 1


def test_compare_stop_acts_within_a_call_batch_and_compare_again_resumes(handlers, tmp_path):
    embs = [tiny_embedding(tmp_path / f"stop{i}.bin", f"<stop-{i}>", seed=i) for i in (1, 2)]
    request = types.SimpleNamespace(session_hash="cmp-stop")
    args = ("a hat by {style}", [], "5, 6", 30, 7.5, 64, 64, "lms", "none", "", None, 1, "vae", [str(e) for e in embs])
    statuses = []
    for _grid, _cells, _zip, status in handlers.compare(*args, request=request):
        statuses.append(status)
        if "of 30)" in status:   # a step of the one call batch (both cells) was reported: press Stop
            handlers.switch.stop("cmp-stop")
    assert statuses[-1].startswith("**Stopped**")
    assert all("0 of 2 cells written" in s for s in statuses[:-1])
    folder = handlers.folder(request) / "compare" / "compare"
    assert not [p for p in folder.glob("*.png")] and not (folder / "manifest.json").exists()
    *_, (_grid, cells, _zip, status) = handlers.compare(*args, request=request)   # runs whole: the flag was cleared
    assert status.startswith("Done: 2 cells") and len(cells) == 2


def test_compare_form_errors(handlers):
    import gradio as gr

    request = types.SimpleNamespace(session_hash="cmp-bad")
    with pytest.raises(gr.Error, match="one seed per style"):
        list(handlers.compare("x {style}", ["gta5-artwork", "line-art"], "1", 2, 7.5, 64, 64, "lms", "none", "",
                              None, 1, "vae", None, request=request))
    with pytest.raises(gr.Error, match="style"):
        list(handlers.compare("no slot", [], "", 2, 7.5, 64, 64, "lms", "none", "", None, 1, "vae", None,
                              request=request))


def _recipe(**kw) -> Recipe:
    return Recipe(prompt="a cat", seed=3, width=64, height=64, steps=2, model="tiny", **kw)


@pytest.mark.parametrize("recipe, words", [
    (_recipe(guidance=Guidance((LossTerm("os:system", 1.0),))), "unknown loss"),
    (_recipe(guidance=Guidance((LossTerm("canny=/etc/hostname", 1.0),))), "server"),
    (_recipe(guidance=Guidance((LossTerm("blue", 1.0),), decoder="/tmp")), "decoder"),
    (_recipe(concepts=(ConceptRef("/etc/passwd", "<p>"),)), "outside"),
])
def test_rerender_refuses_recipes_that_import_code_or_read_server_files(recipe, words, tmp_path):
    from sd_styles.app_pnginfo import check_rerunnable

    with pytest.raises(BadInput, match=words):
        check_rerunnable(recipe, tmp_path)


def test_rerender_accepts_hub_ids_and_files_inside_out(tmp_path):
    from sd_styles.app_pnginfo import check_rerunnable

    inside = tiny_embedding(tmp_path / "x.bin", "<x>")
    recipe = _recipe(concepts=(ConceptRef("sd-concepts-library/line-art", "<line-art>"), ConceptRef(str(inside), "<x>")),
                     guidance=Guidance((LossTerm("color=#ff0000", 5.0),), decoder="linear"))
    assert check_rerunnable(recipe, tmp_path) is recipe


def test_send_to_generate_values(tmp_path):
    from sd_styles.app_pnginfo import form_from_parameters, form_from_recipe
    from sd_styles.catalog import load_catalog
    from sd_styles.metadata import a1111_parameters

    recipe = _recipe(negative_prompt="blurry", scheduler="euler-a",
                     concepts=(ConceptRef("sd-concepts-library/gta5-artwork", "<gta5-artwork>"),
                               ConceptRef("sd-concepts-library/someone-else", "<e>"),
                               ConceptRef("/somewhere/mine.bin", "<m>")),
                     guidance=Guidance((LossTerm("color=#ff0000", 5.0),), every=3, decoder="linear"))
    form, notes = form_from_recipe(recipe, load_catalog())
    assert (form.prompt, form.negative_prompt, form.seed, form.steps, form.scheduler) == (
        "a cat", "blurry", 3, 2, "euler-a")
    assert form.styles == ("gta5-artwork",) and form.hub_concepts == "sd-concepts-library/someone-else"
    assert (form.loss, form.loss_arg, form.loss_scale, form.loss_every, form.loss_decoder) == (
        "color", "#ff0000", 5.0, 3, "linear")
    assert len(notes) == 1 and "mine.bin" in notes[0]
    # an image from another program: its A1111 parameters alone
    other = form_from_parameters(a1111_parameters(recipe))
    assert (other.prompt, other.negative_prompt, other.seed, other.steps, other.width, other.scheduler) == (
        "a cat", "blurry", 3, 2, 64, "euler-a")


def test_png_read_of_a_non_image_is_a_message(handlers, tmp_path):
    import gradio as gr

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(gr.Error, match="not a readable image"):
        handlers.png_read(str(junk))
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert handlers.png_read(str(plain))[1] is None
