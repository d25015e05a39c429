"""SDXL base and base + refiner against diffusers' own pipelines, through the command line and the API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from helpers import pixel_diff
from PIL import Image

from sd_styles.cli import main
from sd_styles.errors import BadInput
from sd_styles.models import family_of, load_model, read_model_index
from sd_styles.rendering import make_recipe, render
from sd_styles.schedulers import make_scheduler

PROMPT, NEGATIVE = "a red fox in the snow", "blurry, low quality"
W, H = 64, 48  # non-square: catches a swapped (height, width) in the time ids and the latents


@pytest.fixture(scope="module")
def reference(tiny_sdxl_dir, tiny_sdxl_refiner_dir):
    """diffusers' SDXL base and img2img (refiner) pipelines on the same files, watermark off."""
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, add_watermarker=False)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_sdxl_refiner_dir, add_watermarker=False)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
        pipe.base_scheduler_config = pipe.scheduler.config
    return base, refiner


def diffusers_image(reference, scheduler, seed, negative, switch=None, steps=4, cfg=7.5, latent=False):
    """Base alone, or base (denoising_end) then refiner (denoising_start) continuing the same generator."""
    base, refiner = reference
    base.scheduler = make_scheduler(scheduler, base.base_scheduler_config)
    gens = [torch.Generator("cpu").manual_seed(seed)]
    common = dict(negative_prompt=negative, num_inference_steps=steps, guidance_scale=cfg, generator=gens)
    if switch is None:
        return base(PROMPT, width=W, height=H, output_type="latent" if latent else "pil", **common).images[0]
    latents = base(PROMPT, width=W, height=H, denoising_end=switch, output_type="latent", **common).images
    refiner.scheduler = make_scheduler(scheduler, refiner.base_scheduler_config)
    out = refiner(PROMPT, image=latents, denoising_start=switch, output_type="latent" if latent else "pil", **common)
    return out.images[0]


def cli_generate(capsys, tmp_path, *args) -> Image.Image:
    """`sd-styles generate` in-process; returns the one image it wrote."""
    code = main(["generate", PROMPT, "--steps", "4", "--size", f"{W}x{H}", "--seed", "3", "--out", str(tmp_path),
                 *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    [path] = out.split()
    return Image.open(path).convert("RGB")


@pytest.mark.parametrize("scheduler", ["lms", "euler", "euler-a", "dpm++2m-karras"])
@pytest.mark.parametrize("negative", [None, NEGATIVE])
def test_base_plus_refiner_cli_equals_diffusers(scheduler, negative, reference, tiny_sdxl_dir, tiny_sdxl_refiner_dir,
                                                capsys, tmp_path):
    neg = [] if negative is None else ["--negative", negative]
    ours = cli_generate(capsys, tmp_path, "--model", str(tiny_sdxl_dir), "--refiner", str(tiny_sdxl_refiner_dir),
                        "--scheduler", scheduler, "--refiner-switch", "0.5", *neg)
    theirs = diffusers_image(reference, scheduler, 3, negative, switch=0.5)
    base_only = diffusers_image(reference, scheduler, 3, negative)
    assert ours.size == (W, H) and np.asarray(ours).std() > 5
    assert pixel_diff(ours, theirs) <= 1
    assert pixel_diff(ours, base_only) > 3, "the refiner must have changed the image"


@pytest.mark.parametrize("scheduler,negative", [("lms", None), ("euler-a", NEGATIVE)])
def test_base_alone_cli_equals_diffusers(scheduler, negative, reference, tiny_sdxl_dir, capsys, tmp_path):
    neg = [] if negative is None else ["--negative", negative]
    ours = cli_generate(capsys, tmp_path, "--model", str(tiny_sdxl_dir), "--scheduler", scheduler, *neg)
    assert pixel_diff(ours, diffusers_image(reference, scheduler, 3, negative)) <= 1


@pytest.mark.parametrize("scheduler,negative", [("lms", ""), ("euler", NEGATIVE), ("dpm++2m-karras", None),
                                                ("ddim", NEGATIVE), ("pndm", None), ("dpm++2m", "")])
def test_base_alone_api_equals_diffusers_and_its_latents(scheduler, negative, reference, tiny_sdxl_model):
    recipe = make_recipe(tiny_sdxl_model, PROMPT, negative_prompt=negative, seed=5, steps=4, scheduler=scheduler,
                         width=W, height=H, refiner=None)
    steps = []
    [ours] = render(tiny_sdxl_model, [recipe], progress=False, callback=steps.append)
    assert pixel_diff(ours.image, diffusers_image(reference, scheduler, 5, negative)) <= 1
    latents = diffusers_image(reference, scheduler, 5, negative, latent=True)
    assert torch.allclose(steps[-1]["latents"][0], latents, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "dpm++2m"])
def test_other_schedulers_with_refiner_equal_diffusers(scheduler, reference, tiny_sdxl_model):
    recipe = make_recipe(tiny_sdxl_model, PROMPT, seed=2, steps=5, scheduler=scheduler, width=W, height=H)
    [ours] = render(tiny_sdxl_model, [recipe], progress=False)
    assert recipe.refiner_switch == 0.8
    assert pixel_diff(ours.image, diffusers_image(reference, scheduler, 2, None, switch=0.8, steps=5)) <= 1


def test_no_negative_means_zeros_but_empty_negative_is_text(tiny_sdxl_model):
    none, empty = (make_recipe(tiny_sdxl_model, PROMPT, negative_prompt=n, seed=1, steps=3, refiner=None)
                   for n in (None, ""))
    assert none.negative_prompt is None and empty.negative_prompt == ""
    assert none.digest() != empty.digest()
    a, b = render(tiny_sdxl_model, [none, empty], progress=False)
    assert pixel_diff(a.image, b.image) > 0


def test_batched_sdxl_cells_equal_cells_alone(tiny_sdxl_model):
    recipes = [make_recipe(tiny_sdxl_model, f"{PROMPT} {i}", negative_prompt=neg, seed=s, steps=4,
                           scheduler="euler-a", width=W, height=H)
               for i, (s, neg) in enumerate([(0, None), (1, NEGATIVE), (2, "")])]
    batched = render(tiny_sdxl_model, recipes, progress=False)
    fused = render(tiny_sdxl_model, recipes, progress=False, fused=True)
    single = [render(tiny_sdxl_model, [r], progress=False, batch_size=1)[0] for r in recipes]
    for b, f, s in zip(batched, fused, single):
        assert pixel_diff(b.image, s.image) == 0
        assert pixel_diff(f.image, s.image) <= 1
    assert pixel_diff(batched[0].image, batched[1].image) > 10


def test_family_comes_from_the_files_not_the_name(tiny_sdxl_dir, tiny_dir, tmp_path):
    sdxl_named_sd1 = shutil.copytree(tiny_sdxl_dir, tmp_path / "stable-diffusion-v1-5")
    sd1_named_sdxl = shutil.copytree(tiny_dir, tmp_path / "stable-diffusion-xl-base-1.0")
    assert load_model(str(sdxl_named_sd1), device="cpu", dtype="fp32").family == "sdxl"
    sd1 = load_model(str(sd1_named_sdxl), device="cpu", dtype="fp32")
    assert sd1.family == "sd1" and sd1.native_size == (64, 64)
    # a generic pipeline class still reads as SDXL from its UNet's text_time conditioning
    index = read_model_index(str(sdxl_named_sd1))
    assert family_of({**index, "_class_name": "DiffusionPipeline"}) == "sdxl"
    assert family_of({"_class_name": "DiffusionPipeline", "unet_config": {"addition_embed_type": None}}) == "sd1"


def test_native_size_is_read_from_the_model(tiny_sdxl_model, shared_fixtures):
    assert tiny_sdxl_model.native_size == (64, 64)
    unet = json.loads((shared_fixtures / "configs" / "stable-diffusion-xl-base-1.0" / "unet" / "config.json").read_text())
    vae = json.loads((shared_fixtures / "configs" / "stable-diffusion-xl-base-1.0" / "vae" / "config.json").read_text())
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == 1024


def test_refiner_shares_identical_parts_only(tiny_sdxl_model, tiny_sdxl_dir, tmp_path):
    from sd_styles.refiner import load_refiner, shares_text_encoder
    from sd_styles.tiny_sdxl import save_tiny_sdxl_refiner

    ref = tiny_sdxl_model.refiner
    assert ref.pipe.vae is tiny_sdxl_model.pipe.vae and shares_text_encoder(tiny_sdxl_model)
    assert ref.pipe.tokenizer_2 is tiny_sdxl_model.pipe.tokenizer_2 and ref.pipe.text_encoder is None
    other = load_model(str(tiny_sdxl_dir), device="cpu", dtype="fp32")
    load_refiner(other, str(save_tiny_sdxl_refiner(tmp_path / "reseeded", seed=1)))  # other weights everywhere
    assert other.refiner.pipe.vae is not other.pipe.vae and not shares_text_encoder(other)


def test_builtin_tiny_sdxl_models_load_by_name():
    model = load_model("tiny-sdxl", device="cpu", refiner="tiny-sdxl-refiner")
    assert model.family == "sdxl" and model.revision == "v1" and model.refiner.revision == "v1"
    assert model.pipe.tokenizer_2.pad_token == "!" and model.pipe.tokenizer.pad_token == "<|endoftext|>"
    assert model.pipe.unet.config.cross_attention_dim == 96 and model.refiner.pipe.unet.config.cross_attention_dim == 64
    assert model.refiner.pipe.vae is model.pipe.vae  # same seeds, same files: shared
    recipe = make_recipe(model, PROMPT, seed=0, steps=2)
    assert (recipe.refiner, recipe.refiner_switch, recipe.refiner_revision) == ("tiny-sdxl-refiner", 0.8, "v1")


def test_refiner_errors_are_one_line_bad_input(tiny_model, tiny_sdxl_model, tiny_dir):
    from sd_styles.refiner import load_refiner

    with pytest.raises(BadInput, match="needs an SDXL base"):
        load_refiner(tiny_model, "tiny-sdxl-refiner")
    with pytest.raises(BadInput, match="not an SDXL model"):
        load_refiner(load_model("tiny-sdxl", device="cpu"), str(tiny_dir))
    with pytest.raises(BadInput, match="refiner"):
        make_recipe(tiny_sdxl_model, PROMPT, refiner="someone/other-refiner")
    with pytest.raises(BadInput, match="refiner switch"):
        make_recipe(tiny_sdxl_model, PROMPT, refiner_switch=1.0)


def test_one_offload_chain_over_base_and_refiner_keeps_pixels(tiny_sdxl_dir, tiny_sdxl_refiner_dir, tiny_sdxl_model):
    from sd_styles.refiner import enable_cpu_offload, offload_order

    model = load_model(str(tiny_sdxl_dir), device="cpu", dtype="fp32", refiner=str(tiny_sdxl_refiner_dir))
    p, r = model.pipe, model.refiner.pipe
    assert offload_order(model) == [p.text_encoder, p.text_encoder_2, p.unet, r.unet, p.vae]  # shared parts once
    enable_cpu_offload(model, torch.device("cpu"))  # the CUDA path's hooks, with the CPU as execution device
    recipe = make_recipe(model, PROMPT, seed=9, steps=3, width=W, height=H, refiner_switch=0.5)
    [hooked] = render(model, [recipe], progress=False)
    [plain] = render(tiny_sdxl_model, [recipe], progress=False)
    assert pixel_diff(hooked.image, plain.image) == 0


def test_refiner_with_its_own_text_encoder_refuses_concepts_it_lacks(tiny_sdxl_dir, tmp_path):
    from dataclasses import replace

    from sd_styles.recipe import ConceptRef
    from sd_styles.refiner import load_refiner
    from sd_styles.tiny_sdxl import save_tiny_sdxl_refiner

    model = load_model(str(tiny_sdxl_dir), device="cpu", dtype="fp32")
    load_refiner(model, str(save_tiny_sdxl_refiner(tmp_path / "own-encoder", seed=1)))
    recipe = replace(make_recipe(model, "a <x> boat", steps=2), concepts=(ConceptRef("x.safetensors", "<x>"),))
    with pytest.raises(BadInput, match="not loaded into it"):
        render(model, [recipe], progress=False)
