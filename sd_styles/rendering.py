"""Render recipes: group compatible cells into batches, run the loop, return images with their recipes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .decoders import make_decoder
from .errors import BadInput
from .fingerprint import execution_fingerprint
from .guidance import loss_histories, make_guided_denoiser
from .memory import check_fits
from .losses import model_loss, resolve_scales
from .models import StyleModel
from .recipe import ConceptRef, Recipe
from .conditioning import encode_conditioning
from .refiner import attached_refiner, plan_phases
from .sampling import StepCallback, decode, initial_latents, make_denoiser, sample, to_pil, uses_cfg
from .speed import speed_state

MODES = ("stacked", "exact")   # stacked: up to batch_size cells per model call; exact: one cell per call


@dataclass
class Result:
    """One rendered cell."""

    image: Image.Image
    recipe: Recipe
    loss_history: list[float] = field(default_factory=list)  # weighted loss per guided step
    execution: dict = field(default_factory=dict)  # {"fingerprint": {...}, "call_shape": {"size", "position"}}

    def save(self, path: str | Path, notes: dict | None = None) -> Path:
        """The PNG with its recipe, loss history and execution record (+ `notes`, e.g. a prompt cut), atomically."""
        from .metadata import save_png

        return save_png(self.image, path, self.recipe, self.loss_history, {**self.execution, **(notes or {})})


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
    refs = tuple(ConceptRef(_portable(c.source), c.token, c.sha256, c.revision) for c in prompt_concepts(model, text))
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


def plan_chunks(recipes: Sequence[Recipe], batch_size: int = 8) -> list[list[int]]:
    """Indices of the cells of each model call: cells sharing settings, in order, at most batch_size per call."""
    if batch_size < 1:
        raise BadInput(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple, list[int]] = {}
    for idx, r in enumerate(recipes):
        groups.setdefault(r.batch_key(), []).append(idx)
    return [g[k:k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise BadInput(f"unknown render mode {mode!r}; allowed: {', '.join(MODES)}")
    return mode


def render(model: StyleModel, recipes: Sequence[Recipe], *, batch_size: int = 8, mode: str = "stacked",
           callback: StepCallback | None = None, progress: bool = True) -> list[Result]:
    """Render every recipe; cells sharing settings are stacked into model calls of up to `batch_size` cells.

    Each result records its call shape (cells in its call, its position) and execution fingerprint:
    with the shape fixed, a cell's pixels do not depend on which cells share its call, so `rerun`
    rebuilds the shape (padding with throw-away cells) and gets the same bits on the same machine.
    `mode="exact"` runs one cell per model call (the shape of a cell rendered alone), slower on a GPU.
    A render the device cannot hold is refused before it starts (`memory.check_fits`).
    """
    check_mode(mode)
    for r in recipes:
        r.check()
        if r.refiner is not None:
            attached_refiner(model, r.refiner)
    chunks = plan_chunks(recipes, batch_size)
    check_fits(model, recipes, batch_size, mode)
    results: list[Result | None] = [None] * len(recipes)
    n = len(recipes)
    for chunk in chunks:
        desc = f"cells {', '.join(str(i + 1) for i in chunk)} of {n}"
        rendered = render_batch(model, [recipes[i] for i in chunk], callback, progress, desc, mode)
        for idx, res in zip(chunk, rendered):
            results[idx] = res
    return results  # type: ignore[return-value]


def render_padded(model: StyleModel, recipe: Recipe, size: int, position: int, mode: str = "stacked",
                  progress: bool = True, callback: StepCallback | None = None) -> Result:
    """Render `recipe` at `position` of a call of `size` cells, the other places filled with throw-away copies."""
    if not (isinstance(size, int) and isinstance(position, int) and 0 <= position < size <= 4096):
        raise BadInput(f"bad recorded call shape: position {position!r} of {size!r} cells")
    recipe.check()
    check_fits(model, [recipe] * size, size, mode)
    return render_batch(model, [recipe] * size, callback, progress, "rerun", mode)[position]


def render_batch(model: StyleModel, cells: list[Recipe], callback: StepCallback | None = None,
                 progress: bool = True, desc: str = "denoising", mode: str = "stacked") -> list[Result]:
    """Render cells that share settings: one model call for all (stacked) or one per cell (exact).

    The loop runs in phases: the whole schedule on the model, or with an SDXL refiner the base's
    steps then the refiner's on the same latents (sd_styles.refiner.plan_phases).
    """
    first = cells[0]
    n = len(cells) if check_mode(mode) == "stacked" else 1  # cells per model call
    phases = plan_phases(model, first, model.device)
    generators = [torch.Generator("cpu").manual_seed(c.seed) for c in cells]
    history: list[torch.Tensor] = []   # (B,) per guided step, on the device until the loop ends
    latents = None
    with torch.no_grad():
        for phase in phases:
            denoise, dtype = _phase_denoiser(phase, cells, n, history)
            if latents is None:
                latents = initial_latents(model.pipe, phase.scheduler, generators, first.width, first.height,
                                          dtype, model.device)
            latents = sample(denoise, phase.scheduler, latents, generators, callback=callback, desc=desc,
                             progress=progress, begin=phase.begin, end=phase.end, begin_index=phase.begin_index)
        images = decode(phases[-1].model.pipe.vae, latents, chunk=1)  # (B, 3, H, W); why one per call: decode()
    fingerprint = execution_fingerprint(model.device, model.dtype, n, mode, speed_state(model))
    histories = loss_histories(history, len(cells))
    return [Result(img, cell, hist, {"fingerprint": fingerprint, "call_shape": {"size": n, "position": k % n}})
            for k, (img, cell, hist) in enumerate(zip(to_pil(images), cells, histories))]


def _phase_denoiser(phase, cells: list[Recipe], n: int, history: list[torch.Tensor]):
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
        denoise = make_guided_denoiser(denoise, scheduler, g, steps, make_decoder(model, g.decoder), terms, history)
    return denoise, conds[0].embeds.dtype
