"""Loss-guided sampling on the tiny model: exactness of the update, which steps are guided, and that it works."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import pixel_diff

from sd_styles import rendering as render_module
from sd_styles.cli import main
from sd_styles.decoders import make_decoder
from sd_styles.guidance import loss_gradient, make_guided_denoiser
from sd_styles.losses import BUILTIN_LOSSES, canny_loss, resolve_loss
from sd_styles.recipe import Guidance, LossTerm
from sd_styles.rendering import make_recipe, render
from sd_styles.sampling import guidance_step_size, noise_level, predict_x0
from sd_styles.schedulers import make_scheduler

SEEDS = (0, 1, 2)
NO_ARG = [name for name, entry in BUILTIN_LOSSES.items() if entry.fn is not None]   # all but clip
# The tiny model's random VAE barely responds (its images sit near mid-grey), so its loss gradients are
# weak: scales are 30x the defaults (tuned for a real VAE at 512x512). 30x is strong enough to move
# every loss clearly and weak enough not to overshoot (much larger scales do, for color and symmetry).
TINY_MULTIPLIER = 30.0


def as_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)


def guided(*terms: LossTerm, **kw) -> Guidance:
    return Guidance(losses=tuple(terms), **kw)


@pytest.fixture(scope="module")
def plain(tiny_model):
    recipes = [make_recipe(tiny_model, "a cat in a hat", seed=s, steps=4) for s in SEEDS]
    return render(tiny_model, recipes, progress=False)


def test_scale_zero_is_exactly_the_plain_image(tiny_model, plain):
    g = guided(LossTerm("blue", 0.0), LossTerm("symmetry", 0.0))
    results = render(tiny_model, [make_recipe(tiny_model, "a cat in a hat", seed=s, steps=4, guidance=g) for s in SEEDS],
                     progress=False)
    assert [pixel_diff(a.image, b.image) for a, b in zip(results, plain)] == [0, 0, 0]


@pytest.mark.parametrize("name", NO_ARG)
def test_every_builtin_loss_lowers_itself_through_the_full_vae(tiny_model, plain, name):
    loss = resolve_loss(LossTerm(name))
    g = guided(LossTerm(name, BUILTIN_LOSSES[name].default_scale * TINY_MULTIPLIER), every=1, decoder="vae")
    results = render(tiny_model, [make_recipe(tiny_model, "a cat in a hat", seed=s, steps=4, guidance=g) for s in SEEDS],
                     progress=False)
    before = [float(loss(as_tensor(r.image))) for r in plain]
    after = [float(loss(as_tensor(r.image))) for r in results]
    assert all(a < 0.99 * b for a, b in zip(after, before)), (before, after)   # at least 1% lower, every seed
    assert all(len(r.loss_history) == 4 and r.loss_history[-1] < r.loss_history[0] for r in results)


def test_batched_guided_cells_equal_one_by_one(tiny_model):
    g = guided(LossTerm("blue", 6000.0), LossTerm("symmetry", 9000.0), every=2)
    recipes = [make_recipe(tiny_model, p, seed=s, steps=4, guidance=g) for p, s in (("a cat", 0), ("a dog", 5), ("a cow", 9))]
    batched = render(tiny_model, recipes, batch_size=3, progress=False)
    single = render(tiny_model, recipes, batch_size=1, progress=False)
    assert max(pixel_diff(a.image, b.image) for a, b in zip(batched, single)) <= 1
    for a, b in zip(batched, single):
        assert np.allclose(a.loss_history, b.loss_history, rtol=1e-4)


@pytest.mark.parametrize("every, start, end, steps, expected", [
    (1, 0.0, 1.0, 5, [0, 1, 2, 3, 4]),
    (3, 0.0, 1.0, 10, [0, 3, 6, 9]),
    (2, 0.3, 0.8, 10, [4, 6]),
    (1, 0.5, 1.0, 6, [3, 4, 5]),
])
def test_guidance_touches_exactly_the_chosen_steps(tiny_model, monkeypatch, every, start, end, steps, expected):
    step = {"i": 0}
    decoded_at: list[int] = []

    def spy_make_decoder(model, name):
        real = make_decoder(model, name)
        return lambda latents: decoded_at.append(step["i"]) or real(latents)

    monkeypatch.setattr(render_module, "make_decoder", spy_make_decoder)
    plain_latents: list[torch.Tensor] = []
    guided_latents: list[torch.Tensor] = []

    def recorder(store):
        def callback(info):
            store.append(info["latents"].clone())
            step["i"] = info["i"] + 1
        return callback

    base = make_recipe(tiny_model, "a cat", seed=3, steps=steps)
    render(tiny_model, [base], callback=recorder(plain_latents), progress=False)
    g = guided(LossTerm("blue", 6000.0), every=every, start=start, end=end)
    step["i"] = 0
    [res] = render(tiny_model, [make_recipe(tiny_model, "a cat", seed=3, steps=steps, guidance=g)],
                   callback=recorder(guided_latents), progress=False)
    assert decoded_at == expected
    assert len(res.loss_history) == len(expected)
    first = expected[0]
    assert all(torch.equal(a, b) for a, b in zip(plain_latents[:first], guided_latents[:first]))  # untouched before
    assert not torch.equal(plain_latents[first], guided_latents[first])


@pytest.mark.parametrize("scheduler", ["lms", "euler", "euler-a", "ddim", "pndm", "dpm++2m"])
def test_guiding_a_single_step_changes_the_image_with_every_scheduler(tiny_model, scheduler):
    """Each guided step takes effect: PNDM's second call restarts from a stored sample, which must move too."""
    base = make_recipe(tiny_model, "a cat", seed=0, steps=5, scheduler=scheduler)
    [plain_res] = render(tiny_model, [base], progress=False)
    # step 0 only, then step 1 only, whether the schedule has 5 timesteps or PNDM's 6
    for start, end in ((0.0, 0.1), (0.1, 0.3)):
        g = guided(LossTerm("blue", 6000.0), start=start, end=end)
        [res] = render(tiny_model, [make_recipe(tiny_model, "a cat", seed=0, steps=5, scheduler=scheduler,
                                                guidance=g)], progress=False)
        assert len(res.loss_history) == 1 and pixel_diff(res.image, plain_res.image) > 2, (scheduler, start)


def classic_guided_latents(vae, latents: torch.Tensor, eps: torch.Tensor, sigma: float, scale: float) -> torch.Tensor:
    """The classic notebook's update, written out independently of sd_styles (blue loss, sigma space)."""
    latents = latents.detach().requires_grad_()
    latents_x0 = latents - sigma * eps
    denoised_images = vae.decode(latents_x0 / vae.config.scaling_factor).sample / 2 + 0.5
    loss = (denoised_images[:, 2] - 0.9).abs().mean() * scale
    cond_grad = torch.autograd.grad(loss, latents)[0]
    return latents.detach() - cond_grad * sigma**2


def test_wrapper_moves_latents_only_on_guided_steps_exactly_as_the_classic_notebook(tiny_model):
    scheduler = make_scheduler("lms", tiny_model.pipe.scheduler.config)
    scheduler.set_timesteps(6)
    eps = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    decoder = make_decoder(tiny_model, "vae")
    terms = [(resolve_loss(LossTerm("blue")), 500.0)]
    history: list[torch.Tensor] = []
    wrapped = make_guided_denoiser(lambda x, i, t: (x, eps), scheduler, guided(LossTerm("blue", 500.0), every=2),
                                   6, decoder, terms, history)
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2)) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        moved, out = wrapped(x, i, t)
        assert out is eps                                       # the model output is never altered
        if i % 2:
            assert moved is x
            continue
        sigma = float(scheduler.sigmas[i])
        expected = classic_guided_latents(tiny_model.pipe.vae, x, eps, sigma, 500.0)
        assert not torch.equal(expected, x)
        torch.testing.assert_close(moved, expected, rtol=1e-5, atol=1e-6)
    assert len(history) == 3 and all(h.shape == (1,) for h in history)  # one (B,) tensor per guided step


@pytest.mark.parametrize("name, prediction", [("lms", "epsilon"), ("euler", "epsilon"), ("ddim", "epsilon"),
                                              ("euler", "v_prediction"), ("ddim", "v_prediction")])
def test_predict_x0_matches_the_schedulers_own_prediction(tiny_model, name, prediction):
    config = {**tiny_model.pipe.scheduler.config, "prediction_type": prediction}
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(5)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps[:3]):
        out = torch.randn(1, 4, 8, 8, generator=gen)
        ours = predict_x0(scheduler, x, out, i, t)
        kw = {"eta": 0.0} if name == "ddim" else {}
        step = scheduler.step(out, t, x, **kw)
        assert torch.allclose(ours, step.pred_original_sample, atol=1e-5)
        x = step.prev_sample


def test_alpha_space_step_is_the_sigma_space_step_rescaled(tiny_model):
    """DDIM latents are sqrt(abar) * (sigma-space latents): moving by grad_vp * (1 - abar) is the same move."""
    ddim = make_scheduler("ddim", tiny_model.pipe.scheduler.config)
    ddim.set_timesteps(4)
    i, t = 1, ddim.timesteps[1]
    sigma = noise_level(ddim, i, t)
    abar = float(ddim.alphas_cumprod[int(t)])
    assert sigma == pytest.approx(((1 - abar) / abar) ** 0.5)
    # d/dx_vp = (1 / sqrt(abar)) d/dx_sigma, and a move dx_sigma maps to sqrt(abar) dx_sigma
    assert guidance_step_size(ddim, i, t) == pytest.approx(abar * sigma ** 2, rel=1e-6)
    assert guidance_step_size(ddim, i, t) == pytest.approx(1 - abar, rel=1e-6)


def test_gradient_reaches_the_latents_for_every_builtin_loss(tiny_model, tmp_path):
    from test_losses import save_tiny_clip

    from sd_styles.losses import clip_loss

    scheduler = make_scheduler("lms", tiny_model.pipe.scheduler.config)
    scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 32, 32, generator=gen) * scheduler.init_noise_sigma
    eps = torch.randn(2, 4, 32, 32, generator=gen)
    reference = torch.rand(3, 48, 48, generator=gen)
    losses = {name: resolve_loss(LossTerm(name)) for name in NO_ARG}
    losses["canny=reference"] = canny_loss(reference)
    losses["color=orange"] = resolve_loss(LossTerm("color=orange"))
    losses["clip=a red apple"] = clip_loss("a red apple", model_id=str(save_tiny_clip(tmp_path / "clip")))
    for decoder_name in ("vae", "linear"):
        decoder = make_decoder(tiny_model, decoder_name)
        for name, loss in losses.items():
            grad, values = loss_gradient(scheduler, latents, eps, 1, scheduler.timesteps[1], decoder, [(loss, 100.0)])
            assert grad.shape == latents.shape and torch.isfinite(grad).all(), (decoder_name, name)
            assert (grad[0].abs().sum() > 0) and (grad[1].abs().sum() > 0), (decoder_name, name)
            assert values.shape == (2,)


def test_a_python_callable_loss_guides_through_the_api(tiny_model, plain):
    def darker(images):
        return images.mean()

    g = guided(LossTerm("darker", 50000.0, fn=darker))
    [res] = render(tiny_model, [make_recipe(tiny_model, "a cat in a hat", seed=0, steps=4, guidance=g)], progress=False)
    assert float(as_tensor(res.image).mean()) < float(as_tensor(plain[0].image).mean())


@pytest.mark.parametrize("args, message", [
    (["--loss", "bleu"], "unknown loss"),
    (["--loss", "blue:abc"], "not a number"),
    (["--loss", "blue:inf"], "finite"),
    (["--loss", "clip"], "needs an argument"),
    (["--loss", "no_such_module_xyz:fn"], "cannot import"),
    (["--loss", "blue", "--loss-decoder", "taesd"], "allowed: vae, tiny, linear"),
    (["--loss", "blue", "--loss-decoder", "/no/such/folder"], "no such folder"),
    (["--loss", "blue", "--loss-every", "0"], "positive integer"),
    (["--loss", "blue", "--loss-start", "0.9", "--loss-end", "0.5"], "start < end"),
])
def test_bad_loss_options_exit_2_with_one_line(capsys, tmp_path, args, message):
    try:
        code = main(["generate", "x", "--model", "tiny", "--steps", "2", "--out", str(tmp_path), *args])
    except SystemExit as exit_:                      # argparse's own usage errors
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err


def test_generate_with_loss_writes_the_guided_image(tmp_path, capsys):
    code = main(["generate", "x", "--model", "tiny", "--steps", "3", "--size", "64x64", "--loss", "blue:3000",
                 "--loss", "warm", "--loss-every", "2", "--loss-decoder", "linear", "--out", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1 and out[0].endswith(".png")
