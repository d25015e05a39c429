"""Half-precision code paths on the CPU: plain and guided renders in bf16 (and fp16 where the CPU runs it), for
several schedulers and decoders, so dtype bugs show up before a GPU run.

Reference: the same recipes in fp32, 3 steps at 32x32 on the tiny model. Measured (max / mean per pixel,
1/255 units): plain bf16 <= 5 / 0.7, fp16 <= 1 / 0.1; guided through the VAE (scale 600) bf16 <= 8 / 1.0;
guided through the linear decoder bf16 up to 112 / 6.5 (its latent-resolution gradient of an |x - c| loss
flips sign on rounding, and the random tiny model is chaotic under it), fp16 up to 10 / 0.34. The bounds
below sit above those; anything dtype-broken (NaN, a wrong cast, an fp16 overflow, a black image) is far
outside them or not finite at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_styles.models import load_model
from sd_styles.recipe import Guidance, LossTerm
from sd_styles.rendering import make_recipe, render

# (scheduler, decoder or None for plain) -> (max, mean) per-pixel difference allowed for bf16 (fp16: below)
CASES = {("lms", None): (8, 1.5), ("dpm++2m", None): (8, 1.5), ("pndm", None): (8, 1.5),
         ("euler-a", "vae"): (16, 2.0), ("ddim", "vae"): (16, 2.0),
         ("dpm++2m", "linear"): (160, 10.0), ("pndm", "linear"): (160, 10.0)}


def _fp16_runs_on_this_cpu() -> bool:
    try:
        conv = torch.nn.Conv2d(4, 4, 3).half()
        return bool(torch.isfinite(conv(torch.ones(1, 4, 8, 8, dtype=torch.float16))).all())
    except (RuntimeError, NotImplementedError):
        return False


@pytest.fixture(scope="module", params=["bf16", "fp16"])
def half_model(request, tiny_dir):
    if request.param == "fp16" and not _fp16_runs_on_this_cpu():
        pytest.skip("this CPU build of torch has no fp16 convolutions")
    return load_model(str(tiny_dir), device="cpu", dtype=request.param)


def _recipes(model, scheduler: str, decoder: str | None):
    guidance = Guidance((LossTerm("blue", 600.0), LossTerm("contrast", 300.0)), decoder=decoder) if decoder else None
    return [make_recipe(model, "a cat in a hat", seed=s, steps=3, width=32, height=32, scheduler=scheduler,
                        guidance=guidance) for s in (0, 1)]


@pytest.mark.parametrize("scheduler, decoder", list(CASES), ids=[f"{s}-{d or 'plain'}" for s, d in CASES])
def test_half_precision_renders_are_finite_and_close_to_fp32(tiny_model, half_model, scheduler, decoder):
    assert half_model.pipe.unet.dtype in (torch.bfloat16, torch.float16)
    fp16 = (16, 1.0) if decoder == "linear" else (4, 0.5)
    max_diff, mean_diff = CASES[scheduler, decoder] if half_model.dtype == torch.bfloat16 else fp16
    half = render(half_model, _recipes(half_model, scheduler, decoder), progress=False)
    full = render(tiny_model, _recipes(tiny_model, scheduler, decoder), progress=False)
    for h, f in zip(half, full):
        a, b = np.asarray(h.image, dtype=np.int16), np.asarray(f.image, dtype=np.int16)
        assert a.std() > 2, "a flat image would make the comparison meaningless"
        diff = np.abs(a - b)
        assert diff.max() <= max_diff and diff.mean() <= mean_diff, (diff.max(), diff.mean())
        if decoder:
            assert len(h.loss_history) == len(f.loss_history) > 0 and all(np.isfinite(h.loss_history))
            np.testing.assert_allclose(h.loss_history[0], f.loss_history[0], rtol=0.05)  # same start, same loss
