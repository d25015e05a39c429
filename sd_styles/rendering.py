"""Render recipes: group compatible cells into batches, run the loop, return images with their recipes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .decoders import make_decoder
from .errors import BadInput
from .guidance import make_guided_denoiser
from .losses import model_loss, resolve_scales
from .models import StyleModel
from .recipe import ConceptRef, Recipe
from .sampling import StepCallback, decode, encode_prompts, initial_latents, make_denoiser, sample, to_pil, uses_cfg
from .schedulers import make_scheduler


@dataclass
class Result:
    """One rendered cell."""

    image: Image.Image
    recipe: Recipe
    loss_history: list[float] = field(default_factory=list)  # weighted loss per guided step


def make_recipe(model: StyleModel, prompt: str, **settings) -> Recipe:
    """A recipe for `model`: native size by default, and the loaded concepts the prompts mention."""
    width, height = model.native_size
    settings.setdefault("width", width)
    settings.setdefault("height", height)
    text = prompt + " " + settings.get("negative_prompt", "")
    refs = tuple(ConceptRef(_portable(c.source), c.token, c.sha256) for c in prompt_concepts(model, text))
    settings.setdefault("concepts", refs)
    if settings.get("guidance") is not None:
        settings["guidance"] = resolve_scales(settings["guidance"])  # the recipe records the scales used
    return Recipe(prompt=prompt, model=model.source, model_revision=model.revision, **settings).check()


def prompt_concepts(model: StyleModel, text: str) -> list:
    """The loaded concepts whose token the tokenizer finds in `text`, as whole added tokens.

    The tokenizer decides, as it does when the prompt is encoded: `EasyNegativeV2` is one token when both
    it and `EasyNegative` are loaded, so only it is recorded.
    """
    tokenizer = model.pipe.tokenizer
    ids = set(tokenizer(text, add_special_tokens=False).input_ids)
    return [c for c in model.concepts.values() if tokenizer.convert_tokens_to_ids(c.token) in ids]


def _portable(source: str) -> str:
    """Local concept files are recorded by absolute path, so `rerun` works from any folder."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def render(model: StyleModel, recipes: Sequence[Recipe], *, batch_size: int = 8, fused: bool = False,
           callback: StepCallback | None = None, progress: bool = True) -> list[Result]:
    """Render every recipe; cells sharing settings run through one denoising loop, `batch_size` at a time.

    By default each model call still sees one cell, so a cell's pixels are bit-identical whether it is
    rendered alone or in a batch (a recipe is a contract). `fused=True` stacks a batch into single UNet /
    VAE calls: faster on a GPU, but float rounding then depends on the batch (at most 1/255 per pixel).
    """
    if batch_size < 1:
        raise BadInput(f"batch_size must be >= 1, got {batch_size}")
    for r in recipes:
        r.check()
    groups: dict[tuple, list[int]] = {}
    for idx, r in enumerate(recipes):
        groups.setdefault(r.batch_key(), []).append(idx)
    results: list[Result | None] = [None] * len(recipes)
    n = len(recipes)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            desc = f"cells {', '.join(str(i + 1) for i in chunk)} of {n}"
            cells = [recipes[i] for i in chunk]
            for idx, res in zip(chunk, render_batch(model, cells, callback, progress, desc, fused)):
                results[idx] = res
    return results  # type: ignore[return-value]


def render_batch(model: StyleModel, cells: list[Recipe], callback: StepCallback | None = None,
                 progress: bool = True, desc: str = "denoising", fused: bool = False) -> list[Result]:
    """Render cells that share size, steps, cfg, scheduler and guidance through one loop."""
    first = cells[0]
    n = len(cells) if fused else 1  # cells per model call
    pipe, device = model.pipe, model.device
    scheduler = make_scheduler(first.scheduler, pipe.scheduler.config)
    scheduler.set_timesteps(first.steps, device=device)
    do_cfg = uses_cfg(pipe, first.cfg)
    embeds = [encode_prompts(pipe, [c.prompt for c in part], [c.negative_prompt for c in part], do_cfg, device)
              for part in (cells[k:k + n] for k in range(0, len(cells), n))]
    generators = [torch.Generator("cpu").manual_seed(c.seed) for c in cells]
    latents = initial_latents(pipe, scheduler, generators, first.width, first.height, embeds[0].dtype, device)
    denoise = make_denoiser(pipe.unet, scheduler, embeds, first.cfg, do_cfg)
    history: list[list[float]] = [[] for _ in cells]
    if first.guided:
        g = first.guidance
        terms = [(model_loss(model, t), float(t.scale)) for t in g.losses]
        steps = len(scheduler.timesteps)  # PNDM runs one more step than asked: guide the whole schedule
        denoise = make_guided_denoiser(denoise, scheduler, g, steps, make_decoder(model, g.decoder), terms, history,
                                       chunk=n)
    with torch.no_grad():
        latents = sample(denoise, scheduler, latents, generators, callback=callback, desc=desc, progress=progress)
        images = decode(pipe.vae, latents, chunk=n)
    return [Result(img, cell, hist) for img, cell, hist in zip(to_pil(images), cells, history)]
