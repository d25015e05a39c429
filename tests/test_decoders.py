"""Loss decoders: names checked early, TAESD conventions, the linear map, caching, gradient checkpointing."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from sd_styles import decoders, hub
from sd_styles.decoders import (SD1_LATENT_RGB, SDXL_LATENT_RGB, SDXL_LATENT_RGB_BIAS, check_decoder, linear_decoder,
                                make_decoder, straight_through_clamp, taesd_decoder, vae_decoder)
from sd_styles.errors import BadInput
from sd_styles.recipe import Guidance, LossTerm
from sd_styles.rendering import make_recipe, render


@pytest.fixture(scope="module")
def taesd_dir(tmp_path_factory, shared_fixtures):
    """A random AutoencoderTiny from the real TAESD config (channels shrunk to 16) saved as a folder."""
    from diffusers import AutoencoderTiny

    config = json.loads((shared_fixtures / "configs" / "taesd" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny" and config["scaling_factor"] == 1.0
    keep = {k: v for k, v in config.items() if not k.startswith("_")}
    keep.update(encoder_block_out_channels=[16] * 4, decoder_block_out_channels=[16] * 4)
    folder = tmp_path_factory.mktemp("taesd") / "taesd-tiny"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoencoderTiny(**keep).save_pretrained(folder)
    return folder


def test_check_decoder_accepts_names_and_taesd_folders(taesd_dir, monkeypatch):
    monkeypatch.setattr(hub, "local_only", lambda: False)
    for name in ("vae", "tiny", "linear", str(taesd_dir)):
        assert check_decoder(name) == name


def test_check_decoder_tiny_offline_and_uncached_fails_before_weights_load(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(decoders, "TAESD_REPOS", {"sd": "sd-styles-test/no-such-taesd", "sdxl": "x/y"})
    with pytest.raises(BadInput, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        check_decoder("tiny")


def test_check_decoder_rejects_early(tmp_path, tiny_dir):
    with pytest.raises(BadInput, match="allowed: vae, tiny, linear"):
        check_decoder("taesd")
    with pytest.raises(BadInput, match="no config.json"):
        check_decoder(str(tmp_path))
    with pytest.raises(BadInput, match="not an AutoencoderTiny"):
        check_decoder(str(tiny_dir / "vae"))          # an AutoencoderKL folder
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BadInput, match="unreadable"):
        check_decoder(str(tmp_path))


def test_taesd_takes_raw_latents_and_maps_minus_one_one_to_unit_range(taesd_dir):
    from diffusers import AutoencoderTiny

    taesd = AutoencoderTiny.from_pretrained(taesd_dir).eval()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = taesd_decoder(taesd)(z)
        theirs = (taesd.decode(z).sample / 2 + 0.5).clamp(0, 1)   # no 1/0.18215: scaling_factor is 1.0
    assert ours.shape == (2, 3, 64, 64)
    assert torch.equal(ours, theirs)


def test_local_taesd_folder_decoder_is_loaded_once_per_model(tiny_model, taesd_dir, monkeypatch):
    from diffusers import AutoencoderTiny

    calls = []
    real = AutoencoderTiny.from_pretrained.__func__
    monkeypatch.setattr(AutoencoderTiny, "from_pretrained",
                        classmethod(lambda cls, *a, **k: calls.append(a) or real(cls, *a, **k)))
    tiny_model.decoders.clear()                  # the real per-model cache: start empty
    g = Guidance(losses=(LossTerm("blue", 500.0),), decoder=str(taesd_dir))
    recipes = [make_recipe(tiny_model, "a cat", seed=s, steps=3, guidance=g) for s in (0, 1)]
    results = render(tiny_model, recipes, batch_size=1, progress=False)   # two batches, three guided steps each
    assert len(calls) == 1
    assert all(len(r.loss_history) == 3 for r in results)
    assert list(tiny_model.decoders) == [(str(taesd_dir), False, False)]   # on the model: (name, checkpoint, compiled)
    assert make_decoder(tiny_model, str(taesd_dir)) is make_decoder(tiny_model, str(taesd_dir))
    assert len(calls) == 1
    tiny_model.decoders.clear()


def test_tiny_from_the_hub_offline_is_one_line_bad_input(tiny_model, monkeypatch):
    monkeypatch.setattr(decoders, "TAESD_REPOS", {"sd": "sd-styles-test/no-such-taesd", "sdxl": "x/y"})
    monkeypatch.setattr(hub, "local_only", lambda: False)   # reach the load itself
    tiny_model.decoders.clear()
    with pytest.raises(BadInput) as err:
        make_decoder(tiny_model, "tiny")
    assert "\n" not in str(err.value) and "--loss-decoder vae or linear" in str(err.value)
    assert not tiny_model.decoders                # a failed load caches nothing


def test_linear_decoder_applies_the_4x3_factors_at_latent_resolution():
    z = torch.zeros(1, 4, 3, 5)
    z[0, 3] = 1.0                                         # only the 4th latent channel
    rgb = linear_decoder(SD1_LATENT_RGB, (0.0, 0.0, 0.0))(z)
    assert rgb.shape == (1, 3, 3, 5)
    expected = torch.tensor(SD1_LATENT_RGB[3]) / 2 + 0.5
    assert torch.allclose(rgb[0, :, 1, 2], expected)
    biased = linear_decoder(SDXL_LATENT_RGB, SDXL_LATENT_RGB_BIAS)(torch.zeros(1, 4, 2, 2))
    assert torch.allclose(biased[0, :, 0, 0], torch.tensor(SDXL_LATENT_RGB_BIAS) / 2 + 0.5)


def test_linear_decoder_picks_sdxl_factors_for_sdxl():
    sd = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(addition_embed_type=None)))
    xl = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(addition_embed_type="text_time")))
    assert not decoders.is_sdxl(sd) and decoders.is_sdxl(xl)
    model = SimpleNamespace(pipe=xl, device=torch.device("cpu"), dtype=torch.float32, decoders={})
    out = make_decoder(model, "linear")(torch.zeros(1, 4, 1, 1))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(SDXL_LATENT_RGB_BIAS) / 2 + 0.5)


def test_straight_through_clamp_keeps_the_gradient_of_out_of_range_pixels():
    x = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    y = straight_through_clamp(x)
    assert y.tolist() == [0.0, 0.5, 1.0]
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.tolist() == [1.0, 1.0, 1.0]


def test_vae_decoder_matches_the_plain_decode(tiny_model):
    from sd_styles.sampling import decode

    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vae_decoder(tiny_model.pipe.vae)(z), decode(tiny_model.pipe.vae, z))


def saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_gradient_checkpointing_keeps_values_and_gradients_and_saves_memory(tiny_model):
    vae = copy.deepcopy(tiny_model.pipe.vae)               # the shared model stays as it is
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))

    def value_and_grad(decoder):
        x = z.clone().requires_grad_(True)
        images = decoder(x)
        (grad,) = torch.autograd.grad((images[:, 2] - 0.9).abs().mean(), x)
        return images.detach(), grad

    plain_bytes = saved_bytes(lambda: vae_decoder(vae)(z.clone().requires_grad_(True)))
    images, grad = value_and_grad(vae_decoder(vae))
    checkpointed = vae_decoder(vae, checkpoint=True)
    assert vae.decoder.gradient_checkpointing
    ckpt_bytes = saved_bytes(lambda: checkpointed(z.clone().requires_grad_(True)))
    images_ckpt, grad_ckpt = value_and_grad(checkpointed)
    assert torch.equal(images, images_ckpt)
    assert torch.allclose(grad, grad_ckpt, rtol=1e-5, atol=1e-8) and grad.abs().sum() > 0
    assert ckpt_bytes < plain_bytes / 3                   # activations are recomputed, not kept


def test_checkpointing_is_on_for_accelerators_only(tiny_model):
    tiny_model.decoders.clear()
    make_decoder(tiny_model, "vae")
    assert list(tiny_model.decoders) == [("vae", False, False)]
    assert not tiny_model.pipe.vae.decoder.gradient_checkpointing   # CPU: time matters more than memory


def test_loading_a_model_uses_the_current_dtype_keyword(tiny_dir):
    """No deprecated `torch_dtype` reaches diffusers (0.40+ warns on it); the dtype is still applied."""
    import warnings

    from sd_styles.models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = load_model(str(tiny_dir), device="cpu", dtype="bf16")
    assert model.pipe.unet.dtype == model.pipe.text_encoder.dtype == torch.bfloat16
