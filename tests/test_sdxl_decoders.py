"""Loss decoders on SDXL: family from the components, TAESDXL, SDXL linear factors, VAE decode like diffusers.

References: diffusers' `StableDiffusionXLPipeline` decode (latents_mean/std, scaling factor 0.13025) and
its documented `pipe.vae = AutoencoderTiny(...)` swap for TAESDXL, on the tiny SDXL base of tests/sdxl_tiny.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from sdxl_tiny import as_style_model, load_tiny_sdxl, tiny_sdxl_vae

from sd_styles import decoders
from sd_styles.decoders import (SD1_LATENT_RGB, SDXL_LATENT_RGB, SDXL_LATENT_RGB_BIAS, latent_family, loss_vae,
                                make_decoder, unscale_latents, vae_decoder)

# SDXL-like per-channel statistics (the values of ComfyUI's SDXL_Playground_2_5 latent format; any will do)
MEAN, STD = (-1.6574, 1.886, -1.383, 2.5155), (8.4927, 5.9022, 6.5498, 5.2299)
RUN = dict(prompt="a red house by the sea", num_inference_steps=2, height=64, width=64)


def run(pipe, output_type: str, seed: int = 5):
    with torch.no_grad():
        return pipe(generator=torch.Generator().manual_seed(seed), output_type=output_type, **RUN).images


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_real_dir):
    """The tiny SDXL base with a VAE whose config carries latents_mean / latents_std."""
    from diffusers import StableDiffusionXLPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = tiny_sdxl_vae(MEAN, STD)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_real_dir, vae=vae, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return as_style_model(pipe)


@pytest.fixture(scope="module")
def taesdxl_dir(tmp_path_factory, shared_fixtures):
    """A random AutoencoderTiny (TAESD's config, which TAESDXL shares; channels shrunk to 16) saved as a folder."""
    from diffusers import AutoencoderTiny

    config = json.loads((shared_fixtures / "configs" / "taesd" / "config.json").read_text())
    keep = {k: v for k, v in config.items() if not k.startswith("_")}
    keep.update(encoder_block_out_channels=[16] * 4, decoder_block_out_channels=[16] * 4)
    folder = tmp_path_factory.mktemp("taesdxl") / "taesdxl-tiny"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        AutoencoderTiny(**keep).save_pretrained(folder)
    return folder


def test_latent_family_comes_from_the_components(sdxl, tiny_model, tiny_sdxl_real_dir):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_sdxl_real_dir, text_encoder=None, tokenizer=None,
                                                               add_watermarker=False)
    assert latent_family(sdxl.pipe) == "sdxl" and latent_family(refiner) == "sdxl"
    assert latent_family(tiny_model.pipe) == "sd"
    assert sdxl.source == "tiny-sdxl-test"  # no "xl" in any name the decision could have read


def test_vae_decoder_equals_the_sdxl_pipeline_decode_with_latents_mean_and_std(sdxl):
    pipe = sdxl.pipe
    assert pipe.vae.config.scaling_factor == 0.13025 and list(pipe.vae.config.latents_mean) == list(MEAN)
    latents = run(pipe, "latent")                                   # (1, 4, 32, 32): the UNet's own latents
    theirs = run(pipe, "pt")                                        # diffusers' decode + postprocess to [0, 1]
    with torch.no_grad():
        ours = make_decoder(sdxl, "vae", checkpoint=False)(latents)
        without_stats = pipe.vae.decode(latents / 0.13025).sample / 2 + 0.5
    assert ours.shape == theirs.shape == (1, 3, 64, 64)
    # straight_through_clamp computes x + (clamp(x) - x): equal to clamp(x) up to one rounding
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert (without_stats.clamp(0, 1) - theirs).abs().max() > 0.01  # the statistics matter here


def test_unscale_latents_without_statistics_divides_by_the_scaling_factor():
    vae = tiny_sdxl_vae()
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unscale_latents(vae, z), z / 0.13025)
    stats = tiny_sdxl_vae(MEAN, STD)
    expected = z * torch.tensor(STD).view(1, 4, 1, 1) / 0.13025 + torch.tensor(MEAN).view(1, 4, 1, 1)
    assert torch.equal(unscale_latents(stats, z), expected)


def test_fp16_vae_that_asks_for_upcasting_never_gives_nan():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = tiny_sdxl_vae().eval()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)  # large activations, as the real SDXL VAE has inside
    vae = vae.half()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.isfinite(vae.decode((z / 0.13025).half()).sample).all()  # fp16 overflows
    safe = loss_vae(vae)
    assert safe is not vae and safe.dtype == torch.float32 and vae.dtype == torch.float16  # CPU: no native bf16
    latents = z.clone().requires_grad_()
    images = vae_decoder(vae)(latents)
    grad, = torch.autograd.grad(images.mean(), latents)
    assert torch.isfinite(images).all() and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():  # the copy decodes the fp16 weights in fp32, as diffusers' upcast does
        upcast = (vae.float().decode(z / 0.13025).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(images.detach(), upcast, atol=1e-6, rtol=0)


def test_fp32_and_plain_fp16_vaes_are_used_as_they_are():
    vae = tiny_sdxl_vae()
    assert loss_vae(vae) is vae
    vae.register_to_config(force_upcast=False)
    assert loss_vae(vae.half()) is vae


def test_tiny_is_taesdxl_on_sdxl_and_taesd_on_sd1(sdxl, tiny_model, taesdxl_dir, monkeypatch):
    from diffusers import AutoencoderTiny

    asked = []

    def fake_load(source, device, dtype):
        asked.append(source)
        return AutoencoderTiny.from_pretrained(taesdxl_dir).to(device, dtype).eval()

    monkeypatch.setattr(decoders, "load_taesd", fake_load)
    monkeypatch.setattr(decoders.hub, "local_only", lambda: False)   # reach the (faked) load itself
    for model in (sdxl, tiny_model):
        model.decoders.pop(("tiny", False, False), None)
        make_decoder(model, "tiny", checkpoint=False)
        model.decoders.pop(("tiny", False, False), None)
    assert asked == ["madebyollin/taesdxl", "madebyollin/taesd"]


def test_local_taesdxl_folder_decodes_like_diffusers_sdxl_with_autoencoder_tiny(sdxl, taesdxl_dir, tiny_sdxl_real_dir):
    from diffusers import AutoencoderTiny

    reference = load_tiny_sdxl(tiny_sdxl_real_dir)
    reference.vae = AutoencoderTiny.from_pretrained(taesdxl_dir)   # diffusers' documented TAESDXL swap
    latents, theirs = run(reference, "latent"), run(reference, "pt")
    with torch.no_grad():
        ours = make_decoder(sdxl, str(taesdxl_dir), checkpoint=False)(latents)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-6, rtol=0)


def test_linear_decoder_uses_the_sdxl_factors_at_latent_resolution(sdxl, tiny_model):
    z = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0)) * 3
    out = make_decoder(sdxl, "linear")(z)
    assert out.shape == (2, 3, 5, 7) and out.min() >= 0 and out.max() <= 1
    factors, bias = torch.tensor(SDXL_LATENT_RGB), torch.tensor(SDXL_LATENT_RGB_BIAS)
    expected = ((torch.einsum("nchw,ck->nkhw", z, factors) + bias.view(1, 3, 1, 1)) / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    sd1 = make_decoder(tiny_model, "linear")(z)
    assert not torch.allclose(out, sd1)
    assert torch.tensor(SDXL_LATENT_RGB).shape == torch.tensor(SD1_LATENT_RGB).shape == (4, 3)


def test_guidance_gradient_through_the_sdxl_vae_with_checkpointing_equals_without(sdxl):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    grads = []
    for checkpoint in (False, True):
        vae = tiny_sdxl_vae(MEAN, STD)
        vae.load_state_dict(sdxl.pipe.vae.state_dict())
        latents = z.clone().requires_grad_()
        grads.append(torch.autograd.grad(vae_decoder(vae, checkpoint=checkpoint)(latents).mean(), latents)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-7) and grads[0].abs().sum() > 0


# ------------------------------------------------------------------- memory of the loss decode's backward

def _measured_peak(vae, width: int, checkpoint: bool) -> int:
    """Live-tensor peak of one guidance gradient, measured as benchmarks/bench_sdxl_vae_memory.py does."""
    from torch.profiler import ProfilerActivity, profile

    from sd_styles.memory import live_tensor_peak

    decode = vae_decoder(vae, checkpoint=checkpoint)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(1, 4, width // f, width // f, generator=torch.Generator().manual_seed(0)).requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.autograd.grad(decode(latents).mean(), latents)
    return live_tensor_peak(prof)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_vae_backward_estimate_against_a_measurement(checkpoint):
    from sd_styles.decoder_memory import vae_backward_bytes

    vae = tiny_sdxl_vae().eval().requires_grad_(False)   # not the measured decoder: the estimate is scaled
    measured = _measured_peak(vae, 64, checkpoint)
    estimate = vae_backward_bytes(vae.config, 64, 64, torch.float32, checkpoint)
    assert abs(estimate - measured) / measured < 0.1, (estimate, measured)


def test_vae_backward_estimate_for_sdxl_reproduces_the_benchmark(shared_fixtures):
    from diffusers import AutoencoderKL

    from sd_styles.decoder_memory import GIB, vae_backward_bytes

    config = AutoencoderKL.load_config(shared_fixtures / "configs" / "stable-diffusion-xl-base-1.0" / "vae")
    config = type("Config", (), config)  # attribute access, as vae.config gives it
    # benchmarks/RESULTS.md, SDXL section: fp32 128x128, 389,759,624 bytes plain and 213,490,944 checkpointed
    assert vae_backward_bytes(config, 128, 128, torch.float32, False) == pytest.approx(389_759_624, rel=0.001)
    assert vae_backward_bytes(config, 128, 128, torch.float32, True) == pytest.approx(213_490_944, rel=0.02)
    at_1024 = {(dt, ck): vae_backward_bytes(config, 1024, 1024, dt, ck) / GIB
               for dt in (torch.float32, torch.bfloat16) for ck in (False, True)}
    assert [round(at_1024[k], 1) for k in sorted(at_1024, key=str)] == [13.4, 7.6, 23.2, 12.9]
    assert vae_backward_bytes(config, 1024, 768, torch.float16, True, images=2) == pytest.approx(
        2 * vae_backward_bytes(config, 768, 1024, torch.bfloat16, True), abs=2)


def test_full_vae_guidance_that_cannot_fit_is_refused_up_front(sdxl, monkeypatch):
    from sd_styles import memory
    from sd_styles.decoder_memory import GIB, vae_guidance_bytes
    from sd_styles.errors import BadInput
    from sd_styles.recipe import Guidance, LossTerm
    from sd_styles.rendering import make_recipe

    need = vae_guidance_bytes(sdxl, 1024, 1024)           # CPU: fp32, no checkpointing, as make_decoder runs it
    guided = [make_recipe(sdxl, "a", seed=0, steps=2, width=1024, height=1024,
                          guidance=Guidance((LossTerm("blue", 200.0),), decoder="vae"))]
    assert memory.estimate(sdxl, guided).guidance >= need  # the measured per-pixel peak (+ the loss's own work)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 * GIB)
    assert memory.check_fits(sdxl, guided).peak < 64 * GIB
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * GIB)
    with pytest.raises(BadInput) as err:
        memory.check_fits(sdxl, guided)
    msg = str(err.value)
    assert "\n" not in msg and "--loss-decoder tiny" in msg and "2.0 GiB is available on cpu" in msg
