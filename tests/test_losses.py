"""The loss library: each built-in's meaning, its gradient, spec parsing and lookup, CLIP from a local folder."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from sd_styles.errors import BadInput
from sd_styles.losses import (BUILTIN_LOSSES, blue_loss, canny_loss, check_loss, clip_loss, color_loss, contrast_loss,
                              luminance, parse_color, parse_loss_spec, resolve_loss, saturation_loss, sepia_loss,
                              soft_edges, symmetry_loss, warm_loss)
from sd_styles.recipe import LossTerm

NO_ARG = [name for name, entry in BUILTIN_LOSSES.items() if entry.fn is not None]


def flat(rgb, size=16) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_registry_has_every_builtin_with_a_positive_default_scale():
    assert set(BUILTIN_LOSSES) == {"blue", "color", "warm", "sepia", "saturation", "contrast", "canny", "symmetry", "clip"}
    assert BUILTIN_LOSSES["blue"].default_scale == 200.0  # the classic notebook's scale with the full VAE
    assert all(e.default_scale > 0 for e in BUILTIN_LOSSES.values())


@pytest.mark.parametrize("name", NO_ARG)
def test_builtin_is_a_finite_scalar_with_a_gradient_on_a_batch(name):
    images = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    value = resolve_loss(LossTerm(name))(images)
    assert value.ndim == 0 and math.isfinite(value.item())
    (grad,) = torch.autograd.grad(value, images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_each_loss_is_zero_at_its_goal():
    assert float(blue_loss(flat([0.3, 0.2, 0.9]))) == pytest.approx(0, abs=1e-7)
    assert float(color_loss((0.2, 0.4, 0.6))(flat([0.2, 0.4, 0.6]))) == pytest.approx(0, abs=1e-7)
    assert float(warm_loss(flat([0.75, 0.5, 0.5]))) == pytest.approx(0, abs=1e-6)
    gray = 0.4
    assert float(sepia_loss(flat([gray * 1.25, gray * 0.95, gray * 0.60]))) == pytest.approx(0, abs=2e-3)
    assert float(saturation_loss(flat([1.0, 0.0, 0.0]))) == pytest.approx(0, abs=1e-7)
    half = torch.zeros(1, 3, 8, 8)
    half[..., 4:] = 1.0
    assert float(contrast_loss(half)) == pytest.approx(0.5 - luminance(half).std().item(), abs=1e-6)
    assert float(contrast_loss(half)) < 0.01
    mirror = torch.rand(1, 3, 8, 4)
    assert float(symmetry_loss(torch.cat([mirror, mirror.flip(-1)], -1))) == 0


def test_losses_order_images_as_their_names_say():
    warm, cool = flat([0.8, 0.5, 0.3]), flat([0.3, 0.5, 0.8])
    assert warm_loss(warm) < warm_loss(cool)
    assert saturation_loss(flat([0.9, 0.1, 0.1])) < saturation_loss(flat([0.5, 0.5, 0.5]))
    noisy = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert contrast_loss(noisy) < contrast_loss(noisy * 0.1 + 0.45)
    assert sepia_loss(flat([0.5, 0.38, 0.24])) < sepia_loss(flat([0.2, 0.4, 0.8]))


def test_soft_edges_are_soft_and_find_a_step_edge():
    step = torch.zeros(1, 3, 16, 16)
    step[..., 8:] = 1.0
    edges = soft_edges(step)
    assert edges.shape == (1, 1, 16, 16)
    assert edges[0, 0, :, 7:9].min() > 0.9 and edges[0, 0, :, :4].max() < 0.1   # on the edge vs far from it
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    soft = soft_edges(ramp * 0.8)[0, 0, 4:12, 4:12]
    assert ((soft > 0.01) & (soft < 0.99)).any()          # no binary map: intermediate values exist
    x = (ramp * 0.8).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(soft_edges(x).mean(), x)
    assert grad.abs().sum() > 0


def test_canny_prefers_edges_and_a_reference_pulls_toward_its_edges():
    canny = resolve_loss(LossTerm("canny"))
    stripes = torch.zeros(1, 3, 16, 16)
    stripes[..., ::4] = 1.0
    assert canny(stripes) < canny(flat([0.5, 0.5, 0.5]))
    ref = Image.fromarray((stripes[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
    toward = canny_loss(ref)
    assert float(toward(stripes)) < 1e-3                  # the reference itself (same size)
    big = torch.nn.functional.interpolate(stripes, size=(32, 32), mode="nearest")
    assert float(toward(big)) < float(toward(flat([0.5, 0.5, 0.5], 32)))  # resized to any image size
    assert float(canny_loss(stripes[0])(stripes)) < 1e-3   # a (3, H, W) tensor works too


def test_named_colour_default_and_parsing():
    assert parse_color("#ff8000") == pytest.approx((1.0, 128 / 255, 0.0))
    assert parse_color("0.1,0.2,0.3") == pytest.approx((0.1, 0.2, 0.3))
    orange = resolve_loss(LossTerm("color=orange"))
    assert float(orange(flat(parse_color("orange")))) == pytest.approx(0, abs=1e-7)
    assert resolve_loss(LossTerm("color"))(flat([0.15, 0.55, 0.55])) < 1e-6   # the named default: teal
    with pytest.raises(BadInput, match="colour"):
        parse_color("not-a-colour")
    with pytest.raises(BadInput, match="\\[0, 1\\]"):
        color_loss((2.0, 0.0, 0.0))


@pytest.mark.parametrize("spec, name, scale", [
    ("blue", "blue", 200.0), ("blue:50", "blue", 50.0), ("canny", "canny", 100.0), ("saturation:-150", "saturation", -150.0),
    ("color=#ff8800:300", "color=#ff8800", 300.0), ("color=#ff8800", "color=#ff8800", 400.0),
    ("clip=a photo: at dusk", "clip=a photo: at dusk", 100.0), ("mymod:myfn", "mymod:myfn", 100.0),
    ("mymod:myfn:3", "mymod:myfn", 3.0),
])
def test_parse_loss_spec_uses_each_loss_default_scale(spec, name, scale):
    term = parse_loss_spec(spec)
    assert (term.name, term.scale) == (name, scale)


def test_parse_loss_spec_explicit_default_overrides_the_registry():
    assert parse_loss_spec("blue", default_scale=7.0).scale == 7.0


@pytest.mark.parametrize("spec, message", [
    ("blue:abc", "not a number"), ("blue:nan", "finite"), ("blue:inf", "finite"), (":5", "NAME"), ("", "NAME"),
])
def test_parse_loss_spec_rejects_bad_specs(spec, message):
    with pytest.raises(BadInput, match=message):
        parse_loss_spec(spec)


@pytest.mark.parametrize("name, message", [
    ("bleu", "unknown loss"), ("clip", "needs an argument"), ("blue=1", "takes no argument"),
    ("color=nope", "colour"), ("canny=/no/such/ref.png", "reference image"), ("clip=  ", "empty"),
    ("no_such_module_xyz:fn", "cannot import"), ("sd_styles.losses:nothing_here", "cannot import"),
    ("sd_styles.losses:DEFAULT_SCALE", "not callable"),
])
def test_check_loss_rejects_bad_names_before_anything_loads(name, message):
    with pytest.raises(BadInput, match=message):
        check_loss(LossTerm(name))


def test_user_losses_module_function_and_api_callable():
    assert resolve_loss(LossTerm("sd_styles.losses:symmetry_loss")) is symmetry_loss
    mine = lambda images: images.mean()  # noqa: E731
    assert resolve_loss(LossTerm("anything", 5.0, fn=mine)) is mine
    assert check_loss(LossTerm("clip=a cat")).name == "clip=a cat"   # validated without loading CLIP


def test_clip_loss_from_a_tiny_local_model_has_a_gradient(tiny_clip_dir):
    loss = clip_loss("a red apple", model_id=str(tiny_clip_dir))
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    value = loss(images)
    assert value.ndim == 0 and 0 <= value.item() <= math.pi ** 2 / 2 + 1e-4   # spherical distance range
    (grad,) = torch.autograd.grad(value, images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the text decides the value: another prompt gives another loss on the same images
    assert float(clip_loss("a blue whale", model_id=str(tiny_clip_dir))(images)) != pytest.approx(float(value))


def test_clip_loss_unavailable_model_is_one_line_bad_input():
    with pytest.raises(BadInput) as err:
        clip_loss("a cat", model_id="sd-styles-test/no-such-clip-model")  # HF_HUB_OFFLINE=1 (conftest)
    assert "\n" not in str(err.value) and "local folder" in str(err.value)
    with pytest.raises(BadInput, match="no such folder"):
        clip_loss("a cat", model_id="./no/such/clip/folder")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIPModel + CLIPProcessor (byte tokenizer, 32x32 images) saved like a hub model."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def save_tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from sd_styles.tiny import write_byte_tokenizer

    tok = write_byte_tokenizer(folder)
    common = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(
        text_config=dict(common, vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(common, image_size=32, patch_size=8), projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tok).save_pretrained(folder)
    return folder


def test_clip_losses_load_clip_once_per_model(tiny_model, tiny_clip_dir, monkeypatch):
    """Like decoders, loss models live on the model: three batches and two texts, one CLIP load."""
    from transformers import CLIPModel

    from sd_styles import losses
    from sd_styles.recipe import Guidance
    from sd_styles.rendering import make_recipe, render

    calls = []
    real = CLIPModel.from_pretrained.__func__
    monkeypatch.setattr(CLIPModel, "from_pretrained",
                        classmethod(lambda cls, *a, **k: calls.append(a) or real(cls, *a, **k)))
    monkeypatch.setattr(losses, "DEFAULT_CLIP", str(tiny_clip_dir))
    tiny_model.losses.clear()
    apple = Guidance((LossTerm("clip=a red apple", 100.0),), decoder="linear")
    whale = Guidance((LossTerm("clip=a blue whale", 100.0),), decoder="linear")
    recipes = [make_recipe(tiny_model, "a cat", seed=s, steps=2, width=32, height=32, guidance=g)
               for s, g in ((0, apple), (1, apple), (2, whale))]
    results = render(tiny_model, recipes, batch_size=1, progress=False)     # three batches
    try:
        assert len(calls) == 1
        assert all(len(r.loss_history) == 2 for r in results)
        assert results[0].loss_history != results[2].loss_history          # each text its own loss
    finally:
        tiny_model.losses.clear()
