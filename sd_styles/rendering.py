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
from .conditioning import encode_conditioning
from .refiner import attached_refiner, plan_phases
from .sampling import StepCallback, decode, initial_latents, make_denoiser, sample, to_pil, uses_cfg


@dataclass
class Result:
    """One rendered cell."""

    image: Image.Image
    recipe: Recipe
    loss_history: list[float] = field(default_factory=list)  # weighted loss per guided step


def make_recipe(model: StyleModel, prompt: str, **settings) -> Recipe:
    """A recipe for `model`: native size by default, and the loaded concepts the prompts mention.

    No `negative_prompt` (or None) means "no negative prompt": SDXL then conditions on zeros, SD 1.x on "".
    A refiner loaded on the model is used unless `refiner=None` is passed.
    """
    width, height = model.native_size
    settings.setdefault("width", width)
    settings.setdefault("height", height)
    if settings.get("negative_prompt") is None:  # None and "" give the same pixels on SD 1.x: record ""
        settings["negative_prompt"] = None if model.family == "sdxl" else ""
    if "refiner" not in settings and model.refiner is not None:
        settings["refiner"] = model.refiner.source
    if settings.get("refiner") is not None:
        settings.setdefault("refiner_revision", attached_refiner(model, settings["refiner"]).revision)
    text = prompt + " " + (settings["negative_prompt"] or "")
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
        if r.refiner is not None:
            attached_refiner(model, r.refiner)
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
    """Render cells that share size, steps, cfg, scheduler, refiner and guidance through one loop.

    The loop runs in phases: the whole schedule on the model, or with an SDXL refiner the base's
    steps then the refiner's on the same latents (sd_styles.refiner.plan_phases).
    """
    first = cells[0]
    n = len(cells) if fused else 1  # cells per model call
    phases = plan_phases(model, first, model.device)
    generators = [torch.Generator("cpu").manual_seed(c.seed) for c in cells]
    history: list[list[float]] = [[] for _ in cells]
    latents = None
    with torch.no_grad():
        for phase in phases:
            denoise, dtype = _phase_denoiser(phase, cells, n, history)
            if latents is None:
                latents = initial_latents(model.pipe, phase.scheduler, generators, first.width, first.height,
                                          dtype, model.device)
            latents = sample(denoise, phase.scheduler, latents, generators, callback=callback, desc=desc,
                             progress=progress, begin=phase.begin, end=phase.end, begin_index=phase.begin_index)
        images = decode(phases[-1].model.pipe.vae, latents, chunk=n)
    return [Result(img, cell, hist) for img, cell, hist in zip(to_pil(images), cells, history)]


def _phase_denoiser(phase, cells: list[Recipe], n: int, history: list[list[float]]):
    """(denoiser, text-embedding dtype) of one phase: its model's conditioning per chunk, guidance wrapped on."""
    first, model, scheduler = cells[0], phase.model, phase.scheduler
    do_cfg = uses_cfg(model.pipe, first.cfg)
    conds = [encode_conditioning(model, [c.prompt for c in part], [c.negative_prompt for c in part], do_cfg,
                                 first.width, first.height)
             for part in (cells[k:k + n] for k in range(0, len(cells), n))]
    denoise = make_denoiser(model.pipe.unet, scheduler, conds, first.cfg, do_cfg)
    if first.guided:
        g = first.guidance
        terms = [(model_loss(model, t), float(t.scale)) for t in g.losses]
        steps = len(scheduler.timesteps)  # PNDM runs one more step than asked: guide the whole schedule
        denoise = make_guided_denoiser(denoise, scheduler, g, steps, make_decoder(model, g.decoder), terms, history,
                                       chunk=n)
    return denoise, conds[0].embeds.dtype
