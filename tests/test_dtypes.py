"""Half-precision code paths on the CPU: plain and guided renders in bf16 (and fp16 where the CPU runs it), for
several schedulers and decoders, so dtype bugs show up before a GPU run.

Reference: the same recipes in fp32. Tolerance: the tiny model's random weights amplify rounding less than
a real model's do, so bf16 (8 mantissa bits) stays within 12/255 per pixel and 2/255 on average here;
anything dtype-broken (NaN, a wrong cast, an fp16 overflow) is far outside that or not finite at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_styles.models import load_model
from sd_styles.recipe import Guidance, LossTerm
from sd_styles.rendering import make_recipe, render

MAX_DIFF, MEAN_DIFF = 12, 2.0          # 1/255 units, per pixel and averaged
CASES = [("lms", None), ("euler-a", "vae"), ("dpm++2m", "linear"), ("ddim", "vae"), ("pndm", "linear")]


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
    guidance = Guidance((LossTerm("blue", 6000.0), LossTerm("contrast", 3000.0)), decoder=decoder) if decoder else None
    return [make_recipe(model, "a cat in a hat", seed=s, steps=3, width=32, height=32, scheduler=scheduler,
                        guidance=guidance) for s in (0, 1)]


@pytest.mark.parametrize("scheduler, decoder", CASES, ids=[f"{s}-{d or 'plain'}" for s, d in CASES])
def test_half_precision_renders_are_finite_and_close_to_fp32(tiny_model, half_model, scheduler, decoder):
    expected_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}
    assert half_model.pipe.unet.dtype in expected_dtype.values()
    half = render(half_model, _recipes(half_model, scheduler, decoder), progress=False)
    full = render(tiny_model, _recipes(tiny_model, scheduler, decoder), progress=False)
    for h, f in zip(half, full):
        a, b = np.asarray(h.image, dtype=np.int16), np.asarray(f.image, dtype=np.int16)
        assert a.std() > 2, "a flat image would make the comparison meaningless"
        diff = np.abs(a - b)
        assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())
        if decoder:
            assert len(h.loss_history) == 3 and all(np.isfinite(h.loss_history))
            np.testing.assert_allclose(h.loss_history, f.loss_history, rtol=0.05)
