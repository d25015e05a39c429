"""Re-render a recipe from scratch in the call shape it was made in, and say how the result compares.

A cell of a stacked batch is redone at its recorded position in a call of its recorded size, the
other places filled with throw-away copies: with the shape fixed, its pixels do not depend on its
companions, so on the same machine the result is identical. Elsewhere the report names the execution
conditions that differ (device, dtype, versions, ...) and the largest pixel difference measured.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from .concepts import add_concept
from .errors import BadInput
from .fingerprint import pixel_report
from .losses import check_loss
from .models import StyleModel, load_model
from .recipe import Recipe
from .rendering import Result, render_padded

log = logging.getLogger(__name__)


def call_shape(execution: dict | None) -> tuple[int, int, str]:
    """(size, position, mode) recorded in an image's execution record; (1, 0, exact) when there is none."""
    shape = (execution or {}).get("call_shape") or {}
    mode = ((execution or {}).get("fingerprint") or {}).get("mode", "exact")
    size, position = shape.get("size", 1), shape.get("position", 0)
    if not (isinstance(size, int) and isinstance(position, int) and 0 <= position < size <= 4096):
        raise BadInput(f"recorded call shape is invalid: {shape!r}")
    return size, position, mode if mode in ("stacked", "exact") else "exact"


def rerun(recipe: Recipe, *, model: str | StyleModel | None = None, device: str = "auto",
          dtype: str = "auto", execution: dict | None = None, progress: bool = True) -> Result:
    """Render `recipe` again in the call shape of `execution` (as recorded in the image; default: alone).

    `model` overrides the recorded model (a source string or a loaded model).
    """
    size, position, mode = call_shape(execution)
    if recipe.guidance is not None:
        for term in recipe.guidance.losses:
            check_loss(term)  # an unimportable user loss fails before any weights load
    if not isinstance(model, StyleModel):
        model = load_model(model or recipe.model, device=device, dtype=dtype, revision=None)
    if recipe.refiner is not None and (model.refiner is None or model.refiner.source != recipe.refiner):
        from .refiner import load_refiner

        load_refiner(model, recipe.refiner)
    if model.source == recipe.model and recipe.model_revision and model.revision != recipe.model_revision:
        # the hub (or the tiny model's version) moved on since the image was made: pixels may differ
        log.warning("model %s is at revision %s, the image was made with %s", model.source, model.revision,
                    recipe.model_revision)
    for ref in recipe.concepts:
        loaded = add_concept(model, ref.source, token=ref.token)
        if ref.sha256 and loaded.sha256 and loaded.sha256 != ref.sha256:
            log.warning("concept %s changed since the image was made (sha256 %s != %s)",
                        ref.source, loaded.sha256[:12], ref.sha256[:12])
    return render_padded(model, replace(recipe, model=model.source), size, position, mode, progress=progress)


def rerun_image(path: str | Path, **options) -> tuple[Result, str]:
    """Rerun the image at `path` from its stored recipe and call shape; (result, report) where the report
    is `identical` or `differs by at most N/255 (mean M); differing conditions: ...`."""
    from PIL import Image

    from .metadata import read_document, read_recipe

    recipe = read_recipe(path)
    recorded = read_document(path).get("rendered_with")
    recorded = recorded if isinstance(recorded, dict) else {}
    result = rerun(recipe, execution=recorded, **options)
    with Image.open(path) as original:
        report = pixel_report(original, result.image, recorded.get("fingerprint"),
                              result.execution.get("fingerprint"))
    return result, report
