"""Re-render a recipe from scratch: load its model and concepts, render one cell."""

from __future__ import annotations

import logging
from dataclasses import replace

from .concepts import add_concept
from .losses import check_loss
from .models import StyleModel, load_model
from .recipe import Recipe
from .rendering import Result, render

log = logging.getLogger(__name__)


def rerun(recipe: Recipe, *, model: str | StyleModel | None = None, device: str = "auto",
          dtype: str = "auto") -> Result:
    """Render `recipe` again. `model` overrides the recorded model (a source string or a loaded model)."""
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
    return render(model, [replace(recipe, model=model.source)])[0]
