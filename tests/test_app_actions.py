"""The app's actions without a browser: form checks, untrusted input, batches, Stop, concepts, PNG info."""

from __future__ import annotations

import random
import time
import types
from pathlib import Path

import pytest
from PIL import Image

from sd_styles.app_actions import (GenerateForm, app_guidance, check_form, concept_requests, safe_name, seeds_for,
                                   session_folder)
from sd_styles.errors import BadInput

from app_helpers import evil_pickle, raw_evil_pickle, tiny_embedding
from helpers import pixel_diff


@pytest.mark.parametrize("bad, words", [
    ({"prompt": "  "}, "prompt"), ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"width": 65}, "width"),
    ({"height": 4096}, "height"), ({"cfg": float("nan")}, "CFG"), ({"seed": -2}, "seed"),
    ({"batch_count": 17}, "batch count"), ({"loss_scale": "x"}, "loss scale"), ({"loss_end": 1.5}, "loss end"),
])
def test_form_errors_name_the_field(bad, words):
    with pytest.raises(BadInput, match=words):
        check_form(GenerateForm(**{"prompt": "a cat", **bad}))


def test_form_values_are_coerced():
    form = check_form(GenerateForm("a cat", None, 3.0, 2.0, 4.0, 7, 64.0, 72, loss_scale=""))
    assert (form.negative_prompt, form.seed, form.batch_count, form.steps, form.width, form.height) == (
        "", 3, 2, 4, 64, 72)
    assert form.loss_scale is None and all(isinstance(v, int) for v in (form.seed, form.steps, form.width))


def test_seeds_of_a_batch():
    assert seeds_for(40, 3) == [40, 41, 42]
    drawn = seeds_for(-1, 2, random.Random(0))
    assert 0 <= drawn[0] < 2**32 and drawn[1] == drawn[0] + 1
    with pytest.raises(BadInput, match="2\\*\\*63"):
        seeds_for(2**63 - 1, 2)


@pytest.mark.parametrize("loss, arg, decoder, words", [
    ("os:system", "", "vae", "unknown loss"),                      # module:function would import code
    ("sd_styles.losses:blue_loss", "", "vae", "unknown loss"),
    ("canny", "/etc/hostname", "vae", "server"),                   # would read a server file
    ("blue", "", "/tmp", "decoder"),                               # a decoder folder on the server
    ("clip", "", "vae", "argument"),
])
def test_guidance_accepts_only_builtins(loss, arg, decoder, words):
    with pytest.raises(BadInput, match=words):
        app_guidance(loss, arg, None, 1, 0.0, 1.0, decoder)


def test_guidance_from_the_form():
    assert app_guidance("none") is None
    g = app_guidance("color", "#ff8800", None, 2, 0.0, 0.5, "linear")
    assert g.losses[0].name == "color=#ff8800" and g.losses[0].scale == 400 and g.every == 2 and g.end == 0.5


@pytest.mark.parametrize("name, safe", [
    ("../../etc/passwd", "passwd"), ("..\\..\\evil.pt", "evil.pt"), ("a b;rm -rf $(x).bin", "a-b-rm-rf-x-.bin"),
    (".hidden.pt", "hidden.pt"), ("", "file"), ("/", "file"),
])
def test_uploaded_names_are_sanitised(name, safe):
    assert safe_name(name) == safe


def test_session_folders_stay_under_out(tmp_path):
    assert session_folder(tmp_path, "../../etc") == (tmp_path / "sessions" / "etc").resolve()
    assert session_folder(tmp_path, None).name == "anonymous"


def test_uploads_are_stored_under_a_safe_name(tmp_path):
    folder = session_folder(tmp_path / "out", "s1")
    src_dir = tmp_path / "up"
    src_dir.mkdir()
    src = tiny_embedding(src_dir / "my style;x.bin", "<tiny-a>")
    [(source, token)] = concept_requests([], [], "", [str(src)], "", folder)
    stored = Path(source)
    assert stored.parent.parent == folder / "concepts" and stored.name == "my-style-x.bin" and token is None
    assert stored.read_bytes() == src.read_bytes()
    for bad in ("/etc/passwd", "../x", "not-a-hub-id"):
        with pytest.raises(BadInput, match="hub id"):
            concept_requests([], [], bad, None, "", folder)
    exe = src_dir / "x.exe"
    exe.write_bytes(b"MZ")
    with pytest.raises(BadInput, match="embeddings are"):
        concept_requests([], [], "", [str(exe)], "", folder)


# ------------------------------------------------------------------ handlers (Gradio wrappers), no browser

@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    pytest.importorskip("gradio")
    from sd_styles.app_events import Handlers
    from sd_styles.catalog import load_catalog
    from sd_styles.models import load_model

    model = load_model("tiny", device="cpu", dtype="fp32")  # its own: the app swaps concepts
    return Handlers(model, tmp_path_factory.mktemp("handlers-out"), load_catalog())


def _request(session: str):
    return types.SimpleNamespace(session_hash=session)


def _ui(prompt, *, seed=1, batch_count=1, steps=2, uploads=None, token="", preview=False, loss="none",
        decoder="vae"):
    """Arguments of Handlers.generate in the order of the page's inputs."""
    return [prompt, "", seed, batch_count, steps, 7.5, 64, 64, "lms", [], "", loss, "", None, 1, 0.0, 1.0,
            decoder, uploads, token, preview]


def test_batch_uses_seed_plus_i_and_recycle_reads_the_selected_image(handlers):
    from sd_styles.metadata import read_recipe

    *_, (gallery, _, status, files, paths) = list(handlers.generate(*_ui("a cat", seed=40, batch_count=2),
                                                                    request=_request("batch")))
    assert "Done 2 of 2" in status and gallery == files == paths
    assert [read_recipe(p).seed for p in paths] == [40, 41]
    assert handlers.reuse_seed(paths[1]) == 41
    event = types.SimpleNamespace(index=1)
    assert handlers.select(paths, event) == paths[1]


def test_uploaded_concept_renders_as_the_cli_does_with_a_live_preview(handlers, tmp_path, capsys):
    from sd_styles.cli import main

    emb = tiny_embedding(tmp_path / "tiny-style.bin", "<tiny-style>", seed=3)
    steps = list(handlers.generate(*_ui("a <tiny-style> cat", seed=5, steps=3, uploads=[str(emb)], preview=True),
                                   request=_request("concept")))
    previews = [s[1] for s in steps if isinstance(s[1], Image.Image)]
    assert previews and previews[0].size == (32, 32)  # the latent-resolution x0 preview of the tiny model
    [path] = steps[-1][4]
    assert main(["generate", "a <tiny-style> cat", "--model", "tiny", "--concept", str(emb), "--seed", "5",
                 "--steps", "3", "--out", str(tmp_path / "cli")]) == 0
    [cli] = capsys.readouterr().out.split()
    assert pixel_diff(Image.open(path), Image.open(cli)) == 0
    # the concept changed the picture (the upload really was used)
    [plain] = list(handlers.generate(*_ui("a <tiny-style> cat", seed=5, steps=3), request=_request("concept")))[-1][4]
    assert pixel_diff(Image.open(plain), Image.open(path)) > 0


@pytest.mark.parametrize("make", [evil_pickle, raw_evil_pickle])
def test_crafted_pickle_is_refused_and_never_runs(handlers, tmp_path, make):
    import gradio as gr

    marker = tmp_path / "pwned"
    evil = make(tmp_path / "style.pt", marker)
    with pytest.raises(gr.Error, match="refused"):
        list(handlers.generate(*_ui("a <x> cat", uploads=[str(evil)]), request=_request("evil")))
    assert not marker.exists()


def test_stop_ends_the_job_within_a_step(handlers):
    request = _request("stopper")
    jobs = handlers.generate(*_ui("a long job", steps=1000), request=request)
    first = next(jobs)
    assert "step" in first[2]
    started = time.monotonic()
    assert handlers.stop(request) is None   # the page hears of it from the job (see the test below)
    rest = list(jobs)
    waited = time.monotonic() - started
    assert "Stopped" in rest[-1][2] and rest[-1][4] == []
    assert waited < 3, f"stopping took {waited:.2f}s"
    # another session's Stop does not touch this one's next job
    handlers.stop(_request("someone-else"))
    assert "Done 1 of 1" in list(handlers.generate(*_ui("a short job"), request=request))[-1][2]


def test_a_slow_step_says_stopping_through_the_jobs_own_stream_then_stopped():
    """Stop's reply writes nothing: "Stopping…" comes in order with the job's updates, never after "Stopped"."""
    import threading

    from sd_styles.app_jobs import stream

    def work(callback):
        for i in range(50):
            time.sleep(0.3)   # a step much longer than the poll
            callback({"i": i})

    stop, kinds = threading.Event(), []
    for kind, _ in stream(work, stop, poll_s=0.05):
        kinds.append(kind)
        if kind == "step":
            stop.set()
    assert kinds == ["step", "stopping", "stopped"]


def test_generate_with_loss_guidance_records_it(handlers):
    from sd_styles.metadata import read_recipe

    *_, last = list(handlers.generate(*_ui("a cat", loss="blue", decoder="linear"), request=_request("loss")))
    [path] = last[4]
    g = read_recipe(path).guidance
    assert (g.losses[0].name, g.losses[0].scale, g.decoder) == ("blue", 200, "linear")
    assert "Loss: \"blue:200\"" in Image.open(path).info["parameters"]  # A1111 quotes values with a colon
