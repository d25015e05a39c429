"""The PNG info tab: read an image's recipe and A1111 parameters, turn them into form values, re-render safely.

A dropped PNG is untrusted: its recipe may name any loss (`module:function` would import code), any
decoder folder or any concept path on the server. Re-rendering accepts only what the Generate tab
accepts: built-in losses, vae/tiny/linear decoders, hub concepts and files inside the app's output folder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from .app_actions import NO_LOSS, GenerateForm, app_guidance, safe_name
from .catalog import CatalogStyle
from .errors import BadInput
from .recipe import Recipe


def png_info(path: str | Path) -> tuple[str, dict | None]:
    """(A1111 `parameters` text, the sd-styles recipe document or None) of an image."""
    from .metadata import PARAMETERS_KEY, RECIPE_KEY, read_document, read_text_chunks

    chunks = read_text_chunks(path)
    doc = read_document(path) if RECIPE_KEY in chunks else None
    return chunks.get(PARAMETERS_KEY, ""), doc


def _loss_fields(recipe: Recipe) -> dict:
    """The form's loss fields for the recipe's first loss term."""
    g = recipe.guidance
    if g is None or not g.losses:
        return {"loss": NO_LOSS}
    name, _, arg = g.losses[0].name.partition("=")
    return {"loss": name, "loss_arg": arg, "loss_scale": g.losses[0].scale, "loss_every": g.every,
            "loss_start": g.start, "loss_end": g.end, "loss_decoder": g.decoder}


def form_from_recipe(recipe: Recipe, catalog: Sequence[CatalogStyle]) -> tuple[GenerateForm, list[str]]:
    """Generate-tab values for `recipe`, and notes on what the form cannot carry (local concept files)."""
    from .concept_sources import is_hub_id

    by_source = {s.concept: s.name for s in catalog}
    styles, hub, notes = [], [], []
    for ref in recipe.concepts:
        if ref.source in by_source:
            styles.append(by_source[ref.source])
        elif is_hub_id(ref.source):
            hub.append(ref.source)
        else:
            notes.append(f"upload {safe_name(ref.source)} again (token {ref.token}): local files are not re-read")
    if recipe.guidance is not None and len(recipe.guidance.losses) > 1:
        notes.append("only the first loss of the recipe fits the form")
    form = GenerateForm(prompt=recipe.prompt, negative_prompt=recipe.negative_prompt, seed=recipe.seed,
                        steps=recipe.steps, cfg=recipe.cfg, width=recipe.width, height=recipe.height,
                        scheduler=recipe.scheduler, styles=tuple(styles), hub_concepts=", ".join(hub),
                        **_loss_fields(recipe))
    return form, notes


def _scheduler(samplers: dict, sampler: str, schedule: str | None, default: str) -> str:
    """Our scheduler for A1111's sampler and schedule type (no schedule type: the sampler's only match)."""
    if schedule is not None:
        return samplers.get((sampler, schedule), default)
    named = [ours for (name, _), ours in samplers.items() if name == sampler]
    return named[0] if len(named) == 1 else default


def form_from_parameters(text: str) -> GenerateForm:
    """Generate-tab values from A1111 infotext alone (an image made by another program)."""
    from .metadata import A1111_SAMPLERS, parse_a1111_parameters

    prompt, negative, f = parse_a1111_parameters(text)
    samplers = {v: k for k, v in A1111_SAMPLERS.items()}   # (Sampler, Schedule type) -> our scheduler
    form = GenerateForm(prompt=prompt, negative_prompt=negative)
    try:
        return replace(form, seed=int(f.get("Seed", -1)), steps=int(f.get("Steps", form.steps)),
                       cfg=float(f.get("CFG scale", form.cfg)), width=int(f.get("Size-1", form.width)),
                       height=int(f.get("Size-2", form.height)),
                       scheduler=_scheduler(samplers, f.get("Sampler", ""), f.get("Schedule type"), form.scheduler))
    except ValueError:
        raise BadInput("the image's parameters have unreadable numbers") from None


def check_rerunnable(recipe: Recipe, out_root: Path) -> Recipe:
    """Refuse a recipe that would import code or read server files; returns it unchanged otherwise."""
    from .concept_sources import is_hub_id

    if recipe.guidance is not None:
        for term in recipe.guidance.losses:
            name, _, arg = term.name.partition("=")
            app_guidance(name, arg, term.scale, recipe.guidance.every, recipe.guidance.start,
                         recipe.guidance.end, recipe.guidance.decoder)
    root = Path(out_root).resolve()
    for ref in recipe.concepts:
        path = Path(ref.source)
        inside = path.is_absolute() and path.resolve().is_relative_to(root) and path.is_file()
        if not (inside or is_hub_id(ref.source)):
            raise BadInput(f"the recipe's concept {safe_name(ref.source)} is a file outside this app's output "
                           "folder; upload it on the Generate tab instead")
    return recipe.check()


def rerender(model, recipe: Recipe, folder: Path, original: str | Path | None = None) -> tuple[Path, str]:
    """Render `recipe` again with the loaded model, save it, and say how it compares to the original image."""
    import numpy as np
    from PIL import Image

    from .app_actions import use_concepts
    from .metadata import cell_filename, read_document
    from .reproduce import rerun

    use_concepts(model, [])  # only the recipe's own concepts (rerun loads them) may shape the prompt
    recorded = read_document(original).get("rendered_with") if original is not None else None
    res = rerun(recipe, model=model, execution=recorded if isinstance(recorded, dict) else None, progress=False)
    path = res.save(folder / cell_filename(res.recipe))
    note = "" if recipe.model == model.source else f" (made with {recipe.model}, re-rendered with {model.source})"
    if original is None:
        return path, f"re-rendered{note}"
    with Image.open(original) as im:
        old = np.asarray(im.convert("RGB"), dtype=np.int16)
    new = np.asarray(res.image.convert("RGB"), dtype=np.int16)
    if old.shape != new.shape:
        return path, f"re-rendered{note}; the original has another size"
    diff = int(np.abs(old - new).max())
    verdict = "identical to the original" if diff == 0 else f"differs from the original by up to {diff}/255"
    return path, f"re-rendered{note}: {verdict}"
