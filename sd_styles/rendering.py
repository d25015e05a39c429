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
from .losses import resolve_loss
from .models import StyleModel
from .recipe import ConceptRef, Recipe
from .sampling import StepCallback, decode, encode_prompts, initial_latents, make_denoiser, sample, to_pil, uses_cfg
from .schedulers import make_scheduler
from .speed import speed_state


MODES = ("stacked", "exact")   # stacked: up to batch_size cells per model call; exact: one cell per call


@dataclass
class Result:
    """One rendered cell."""

    image: Image.Image
    recipe: Recipe
    loss_history: list[float] = field(default_factory=list)  # weighted loss per guided step
    execution: dict = field(default_factory=dict)  # {"fingerprint": {...}, "call_shape": {"size", "position"}}

    def save(self, path: str | Path) -> Path:
        """The PNG with its recipe, loss history and execution record (atomic)."""
        from .metadata import save_png

        return save_png(self.image, path, self.recipe, self.loss_history, self.execution)


def make_recipe(model: StyleModel, prompt: str, **settings) -> Recipe:
    """A recipe for `model`: native size by default, and the loaded concepts the prompts mention."""
    width, height = model.native_size
    settings.setdefault("width", width)
    settings.setdefault("height", height)
    text = prompt + " " + settings.get("negative_prompt", "")
    refs = tuple(ConceptRef(_portable(c.source), c.token, c.sha256) for tok, c in model.concepts.items() if tok in text)
    settings.setdefault("concepts", refs)
    return Recipe(prompt=prompt, model=model.source, model_revision=model.revision, **settings).check()


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
    """Render cells that share size, steps, cfg, scheduler and guidance: one model call (stacked) or one per cell."""
    first = cells[0]
    n = len(cells) if check_mode(mode) == "stacked" else 1  # cells per model call
    pipe, device = model.pipe, model.device
    scheduler = make_scheduler(first.scheduler, pipe.scheduler.config)
    scheduler.set_timesteps(first.steps, device=device)
    do_cfg = uses_cfg(pipe, first.cfg)
    # per-chunk conditioning: chunk j's text embeddings feed chunk j's UNet call
    embeds = [encode_prompts(pipe, [c.prompt for c in part], [c.negative_prompt for c in part], do_cfg, device)
              for part in (cells[k:k + n] for k in range(0, len(cells), n))]
    generators = [torch.Generator("cpu").manual_seed(c.seed) for c in cells]
    latents = initial_latents(pipe, scheduler, generators, first.width, first.height, embeds[0].dtype, device)
    denoise = make_denoiser(pipe.unet, scheduler, embeds, first.cfg, do_cfg)
    history: list[torch.Tensor] = []   # (B,) per guided step, on the device until the loop ends
    if first.guided:
        g = first.guidance
        terms = [(resolve_loss(t), float(t.scale)) for t in g.losses]
        steps = len(scheduler.timesteps)  # PNDM runs one more step than asked: guide the whole schedule
        denoise = make_guided_denoiser(denoise, scheduler, g, steps, make_decoder(model, g.decoder), terms, history)
    with torch.no_grad():
        latents = sample(denoise, scheduler, latents, generators, callback=callback, desc=desc, progress=progress)
        images = decode(pipe.vae, latents, chunk=n)  # (B, 3, H, W), the same call shape as the UNet's
    fingerprint = execution_fingerprint(device, model.dtype, n, mode, speed_state(model))
    histories = loss_histories(history, len(cells))
    return [Result(img, cell, hist, {"fingerprint": fingerprint, "call_shape": {"size": n, "position": k % n}})
            for k, (img, cell, hist) in enumerate(zip(to_pil(images), cells, histories))]
