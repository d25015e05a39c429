"""Textual-inversion training on the tiny model: it learns, touches only its own rows, writes files diffusers
loads and renders identically, survives SIGKILL + --resume bit for bit, and refuses bad input with exit 2."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import pixel_diff
from PIL import Image

from sd_styles.errors import RuntimeFailure

ROOT = Path(__file__).resolve().parents[1]
TOKEN, INIT = "<h12-toy>", "o"
SETTINGS = dict(steps=16, size=32, seed=5, lr=0.05, scale_lr=False, batch_size=2, grad_accum=1)
PROMPT, SEED = "a photo of a {} on a table", 11


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: quick on a shared box, and the same float reduction order as the CLI runs below."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_images(folder: Path) -> Path:
    """Pictures of several sizes, modes and formats, plus files that are not images."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (size, fmt, mode) in enumerate([((40, 30), "JPEG", "RGB"), ((30, 50), "PNG", "RGBA"),
                                           ((48, 48), "WEBP", "RGB"), ((36, 44), "BMP", "L")]):
        arr = np.zeros((size[1], size[0], 3), np.uint8)
        arr[..., 0], arr[:, : size[0] // 2, 2] = 220, int(rng.integers(0, 255))
        Image.fromarray(arr).convert(mode).save(folder / f"pic{i}.{fmt.lower()}", format=fmt)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("train") / "pics")


@pytest.fixture(scope="module")
def trained(tiny_dir, images, tmp_path_factory):
    """One uninterrupted run through the Python API; the embedding matrix before and after."""
    from sd_styles.models import load_model
    from sd_styles.training import train

    model = load_model(str(tiny_dir), device="cpu", dtype="fp32")
    te = model.pipe.text_encoder
    te.resize_token_embeddings(len(model.pipe.tokenizer) + 8)  # room for the token: no resize inside train()
    before = te.get_input_embeddings().weight.detach().clone()
    out = tmp_path_factory.mktemp("train-out") / "toy.safetensors"
    result = train(model, images, TOKEN, INIT, out, progress=False, preview_every=8, preview_steps=2, save_every=8,
                   **SETTINGS)
    return result, before, te.get_input_embeddings().weight.detach().clone()


@pytest.fixture(scope="module")
def text_driven_dir(tmp_path_factory) -> Path:
    """A tiny model whose UNet output depends strongly on the text, so a placeholder has something to learn.

    In the plain tiny model a completely different text moves the UNet's output by ~3%: its training loss
    is all noise. Here the pooled text also drives the time embedding (diffusers' `addition_embed_type="text"`,
    scale-shift resnets), amplified 10x, and the output is 3x larger: the text's share of the error is large.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from sd_styles.tiny import tiny_components, write_byte_tokenizer

    folder = tmp_path_factory.mktemp("models") / "text-driven"
    components = tiny_components(write_byte_tokenizer(folder / "tokenizer"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=8,
            addition_embed_type="text", addition_embed_type_num_heads=4, resnet_time_scale_shift="scale_shift")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.startswith("add_embedding") and p.dim() == 2:
                p.mul_(10)
        unet.conv_out.weight.mul_(3)
    StableDiffusionPipeline(**{**components, "unet": unet}, requires_safety_checker=False).save_pretrained(folder)
    return folder


def test_a_short_run_lowers_the_training_loss(text_driven_dir, images, tmp_path):
    """First vs last quarter of a 16-step run, and against a run with the same draws that cannot learn."""
    from sd_styles.models import load_model
    from sd_styles.training import train

    runs = {}
    for lr in (0.1, 1e-7):
        model = load_model(str(text_driven_dir), device="cpu", dtype="fp32")
        result = train(model, images, "<h12-learn>", INIT, tmp_path / f"{lr}.safetensors", progress=False, steps=16,
                       size=32, seed=5, lr=lr, scale_lr=False, batch_size=2, grad_accum=1, preview_every=0,
                       save_every=0)
        runs[lr] = np.array([v for _, v, _ in result.losses])
    trained, frozen = runs[0.1], runs[1e-7]
    assert trained[-4:].mean() < trained[:4].mean() - 0.02, trained
    assert trained[-4:].mean() < frozen[-4:].mean() - 0.04, (trained, frozen)  # same batches, same noise


def test_training_logs_every_step_and_writes_its_artefacts(trained):
    from sd_styles.training_state import read_loss_csv

    result, _, _ = trained
    losses = [loss for _, loss, _ in result.losses]
    assert len(losses) == SETTINGS["steps"] and all(np.isfinite(losses))
    folder = result.out.with_name(result.out.name + ".training")
    assert read_loss_csv(folder / "loss.csv") == [(s, pytest.approx(v, rel=1e-6), pytest.approx(lr)) for s, v, lr in
                                                  result.losses]
    assert [p.name for p in result.previews] == ["step-000008.png", "step-000016.png"]
    assert all(Image.open(p).size == (32, 32) for p in result.previews)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-000008.pt", "step-000016.pt"]
    assert set(result.files) >= {result.out, folder / "loss.csv", folder / "training.json", *result.previews}


def test_only_the_placeholder_rows_change(trained):
    result, before, after = trained
    ids = result.model.pipe.tokenizer.convert_tokens_to_ids([TOKEN])
    others = torch.ones(before.shape[0], dtype=torch.bool)
    others[ids] = False
    assert before.shape == after.shape
    assert torch.equal(before[others], after[others])  # bit-identical
    assert torch.equal(after[ids], result.vectors)
    init = before[result.model.pipe.tokenizer.convert_tokens_to_ids(INIT + "</w>")]
    assert (result.vectors[0] - init).abs().max() > 0.1  # it learned something


def test_metadata_records_model_images_and_settings(trained, images, tiny_dir):
    from sd_styles.training_outputs import read_training_metadata

    result, _, _ = trained
    meta = read_training_metadata(result.out)
    assert meta["model"] == str(tiny_dir) and meta["token"] == TOKEN and meta["step"] == SETTINGS["steps"]
    want = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in images.iterdir() if p.name.startswith("pic")}
    assert {i["name"]: i["sha256"] for i in meta["images"]} == want  # notes.txt and broken.png skipped
    assert all(meta[k] == v for k, v in SETTINGS.items())


def test_skipped_files_are_named(tiny_dir, images, caplog):
    from sd_styles.training_data import read_image_folder

    with caplog.at_level(logging.WARNING, logger="sd_styles.training_data"):
        assert len(read_image_folder(images)) == 4
    assert "notes.txt" in caplog.text and "broken.png" in caplog.text


@pytest.mark.parametrize("fmt,name", [("diffusers", "toy.safetensors"), ("sd-concepts", "toy-concept"),
                                      ("a1111", "toy.pt")])
def test_every_format_renders_like_diffusers(trained, tiny_dir, tmp_path, fmt, name):
    """Our loader and diffusers' load_textual_inversion read the same vectors and render the same image."""
    from diffusers import StableDiffusionPipeline

    from sd_styles.concepts import add_concept
    from sd_styles.models import load_model
    from sd_styles.rendering import make_recipe, render
    from sd_styles.training_outputs import output_path, read_training_metadata, write_embedding

    result, _, _ = trained
    if fmt == "diffusers":
        path = result.out
    else:
        path = output_path(tmp_path / name, fmt, TOKEN)
        write_embedding(path, fmt, TOKEN, result.vectors, {"model": "tiny", "step": 16}, "object")
        assert read_training_metadata(path)["step"] == 16
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(path))  # the token comes from the file itself
    ref_id = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ref_id], result.vectors[0])
    model = load_model(str(tiny_dir), device="cpu", dtype="fp32")
    assert add_concept(model, str(path)).token == TOKEN
    recipe = make_recipe(model, PROMPT.format(TOKEN), seed=SEED, steps=2, width=32, height=32, scheduler="pndm")
    [ours] = render(model, [recipe], progress=False)
    theirs = pipe(PROMPT.format(TOKEN), num_inference_steps=2, height=32, width=32,
                  generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    assert pixel_diff(ours.image, theirs) <= 1
    if fmt == "diffusers":  # the trained token changes the picture: compare with its init word
        [plain] = render(model, [make_recipe(model, PROMPT.format(INIT), seed=SEED, steps=2, width=32, height=32,
                                             scheduler="pndm")], progress=False)
        assert pixel_diff(ours.image, plain.image) > 5


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "sd_styles", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def cli_args(tiny_dir, images, out) -> list[str]:
    s = SETTINGS
    return ["--model", str(tiny_dir), "--device", "cpu", "--dtype", "fp32", "--images", str(images), "--token", TOKEN,
            "--init-word", INIT, "--out", str(out), "--steps", str(s["steps"]), "--size", str(s["size"]), "--seed",
            str(s["seed"]), "--lr", str(s["lr"]), "--no-scale-lr", "--batch-size", str(s["batch_size"]),
            "--grad-accum", str(s["grad_accum"]), "--save-every", "3", "--preview-every", "0", "--no-progress"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(trained, tiny_dir, images, tmp_path):
    from safetensors.torch import load_file

    from sd_styles.training_state import read_loss_csv

    out = tmp_path / "killed.safetensors"
    ckpts = tmp_path / "killed.safetensors.training" / "checkpoints"
    proc = cli(*cli_args(tiny_dir, images, out))
    deadline = time.time() + 120
    while not (ckpts / "step-000003.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    time.sleep(0.3)  # a few steps past the checkpoint: those must be redone identically
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    again = cli(*cli_args(tiny_dir, images, out), "--resume")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert str(out) in stdout.splitlines()
    assert torch.equal(load_file(out)[TOKEN], trained[0].vectors)  # bit for bit
    assert [s for s, _, _ in read_loss_csv(out.with_name(out.name + ".training") / "loss.csv")] == list(range(1, 17))


def test_a_finished_run_is_not_overwritten_silently(trained, tiny_dir, images, capsys):
    from sd_styles.cli import main

    code = main(["train", *cli_args(tiny_dir, images, trained[0].out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-styles")]
    assert code == 2 and len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dir, images, tmp_path):
    from sd_styles.models import load_model
    from sd_styles.training import train

    model = load_model(str(tiny_dir), device="cpu", dtype="fp32")
    out = tmp_path / "nan.safetensors"
    with pytest.raises(RuntimeFailure, match=r"step 2: the loss is nan.*step-000001\.pt"):
        train(model, images, "<h12-nan>", INIT, out, progress=False, steps=4, size=16, lr=1e30, grad_accum=1,
              save_every=1, preview_every=0)
    assert not out.exists()
    ckpt = tmp_path / "nan.safetensors.training" / "checkpoints" / "step-000001.pt"
    assert torch.isfinite(torch.load(ckpt, weights_only=True)["vectors"]).all()


@pytest.mark.parametrize("change,message", [
    (lambda a, t: a.__setitem__(a.index("--images") + 1, str(t / "empty")), "no readable images"),
    (lambda a, t: a.__setitem__(a.index("--images") + 1, str(t / "missing")), "not a folder"),
    (lambda a, t: a.__setitem__(a.index("--token") + 1, "a"), "already in the model's vocabulary"),
    (lambda a, t: a.__setitem__(a.index("--init-word") + 1, "cat"), "is 3 tokens"),
    (lambda a, t: a.__setitem__(a.index("--out") + 1, str(t / "x.png")), "writes .safetensors"),
    (lambda a, t: a.__setitem__(a.index("--size") + 1, "30"), "multiple of 8"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_dir, images, tmp_path, capsys, change, message):
    from sd_styles.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    args = cli_args(tiny_dir, images, tmp_path / "bad.safetensors")
    change(args, tmp_path)
    code = main(["train", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("sd-styles")]  # (weight-loading bars aside)
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_v_prediction_models_train_on_the_velocity(tiny_dir, images, tmp_path):
    """SD 2.x-style schedulers (prediction_type v_prediction): same draws, another target, so another loss."""
    import json
    import shutil

    from sd_styles.models import load_model
    from sd_styles.training import train

    vdir = tmp_path / "tiny-v"
    shutil.copytree(tiny_dir, vdir)
    config = vdir / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "v_prediction"}))
    runs = {}
    for name, folder in (("eps", tiny_dir), ("v", vdir)):
        model = load_model(str(folder), device="cpu", dtype="fp32")
        runs[name] = train(model, images, "<h12-v>", INIT, tmp_path / f"{name}.safetensors", progress=False,
                           steps=2, size=16, grad_accum=1, preview_every=0, save_every=0).losses
    assert all(np.isfinite(v) for _, v, _ in runs["v"])
    assert all(abs(a[1] - b[1]) > 1e-4 for a, b in zip(runs["eps"], runs["v"]))


def test_training_again_in_one_session_replaces_the_concept(tiny_dir, images, tmp_path):
    from sd_styles.models import load_model
    from sd_styles.training import train

    model = load_model(str(tiny_dir), device="cpu", dtype="fp32")
    kw = dict(progress=False, steps=1, size=16, grad_accum=1, preview_every=0, save_every=0)
    first = train(model, images, "<h12-again>", INIT, tmp_path / "a.safetensors", seed=1, **kw)
    rows = model.pipe.text_encoder.get_input_embeddings().num_embeddings
    second = train(model, images, "<h12-again>", INIT, tmp_path / "b.safetensors", seed=2, **kw)
    assert model.concepts["<h12-again>"].path == str(tmp_path / "b.safetensors")
    assert model.pipe.text_encoder.get_input_embeddings().num_embeddings == rows  # the slot was reused
    assert not torch.equal(first.vectors, second.vectors)


def test_sdxl_models_are_refused_with_one_line(images, tmp_path, capsys):
    from sd_styles.cli import main
    from sd_styles.tiny_sdxl import TINY_SDXL_ID

    code = main(["train", "--model", TINY_SDXL_ID, "--device", "cpu", "--images", str(images), "--token", "<h12-xl>",
                 "--init-word", INIT, "--out", str(tmp_path / "xl.safetensors"), "--no-progress"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sd-styles")]
    assert code == 2 and len(lines) == 1 and "SDXL" in lines[0]
