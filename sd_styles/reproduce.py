"""Re-render a recipe from scratch in the call shape it was made in, and say how the result compares.

A cell of a stacked batch is redone at its recorded position in a call of its recorded size, the
other places filled with throw-away copies: with the shape fixed, its pixels do not depend on its
companions, so on the same machine the result is identical. Elsewhere the report names the execution
conditions that differ (device, dtype, versions, ...) and the largest pixel difference measured.

A recipe read from a file is untrusted: `check_rerun` refuses a `module:function` loss unless its module
is allowed explicitly, because importing a module runs its code. The model and hub concepts are loaded
at the hub revisions the recipe recorded.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Collection

from .concepts import add_concept
from .errors import BadInput
from .fingerprint import pixel_report
from .hub import is_hub_id
from .losses import BUILTIN_LOSSES, check_loss
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


def loss_module(name: str) -> str | None:
    """The module a `module:function` loss name would import; None for built-ins."""
    if name.partition("=")[0].strip() in BUILTIN_LOSSES or ":" not in name:
        return None
    return name.partition(":")[0]


def check_rerun(recipe: Recipe, *, allow_loss_modules: Collection[str] = ()) -> Recipe:
    """Everything a rerun needs, checked before weights load; never imports a module that was not allowed."""
    recipe.check()
    for term in recipe.guidance.losses if recipe.guidance is not None else ():
        module = loss_module(term.name)
        if module is not None and module not in allow_loss_modules and term.fn is None:
            raise BadInput(f"the recipe names the loss {term.name!r}, which would import the Python module "
                           f"{module!r} and run its code; if you trust it, pass --allow-loss-module {module}")
        check_loss(term)  # built-ins and allowed modules: their arguments and import are checked now
    return recipe


def load_recorded_model(recipe: Recipe, model: str | None = None, *, device: str = "auto",
                        dtype: str = "auto") -> StyleModel:
    """The recipe's model at its recorded hub revision, or `model` instead (then at its newest revision)."""
    pinned = recipe.model_revision if model is None and is_hub_id(recipe.model) else None
    return load_model(model or recipe.model, device=device, dtype=dtype, revision=pinned)


def rerun(recipe: Recipe, *, model: str | StyleModel | None = None, device: str = "auto",
          dtype: str = "auto", execution: dict | None = None, progress: bool = True,
          allow_loss_modules: Collection[str] = ()) -> Result:
    """Render `recipe` again in the call shape of `execution` (as recorded in the image; default: alone).

    `model` overrides the recorded model (a source string or a loaded model).
    """
    size, position, mode = call_shape(execution)
    check_rerun(recipe, allow_loss_modules=allow_loss_modules)  # fails before any weights load
    if not isinstance(model, StyleModel):
        model = load_recorded_model(recipe, model, device=device, dtype=dtype)
    if recipe.refiner is not None and (model.refiner is None or model.refiner.source != recipe.refiner):
        from .refiner import load_refiner

        pinned = recipe.refiner_revision if is_hub_id(recipe.refiner) else None  # the recorded hub commit
        load_refiner(model, recipe.refiner, revision=pinned)
    if model.source == recipe.model and recipe.model_revision and model.revision != recipe.model_revision:
        # the hub (or the tiny model's version) moved on since the image was made: pixels may differ
        log.warning("model %s is at revision %s, the image was made with %s", model.source, model.revision,
                    recipe.model_revision)
    for ref in recipe.concepts:
        loaded = add_concept(model, ref.source, token=ref.token, revision=ref.revision)  # pinned hub commit
        if ref.sha256 and loaded.sha256 and loaded.sha256 != ref.sha256:
            log.warning("concept %s changed since the image was made (sha256 %s != %s)",
                        ref.source, loaded.sha256[:12], ref.sha256[:12])
    return render_padded(model, replace(recipe, model=model.source), size, position, mode, progress=progress)


def recorded_execution(path: str | Path) -> dict:
    """The execution record (fingerprint, call shape) stored in an image; {} when there is none."""
    from .metadata import read_document

    recorded = read_document(path).get("rendered_with")
    return recorded if isinstance(recorded, dict) else {}


def rerun_image(path: str | Path, recipe: Recipe | None = None, **options) -> tuple[Result, str]:
    """Rerun the image at `path` from its stored recipe and call shape; (result, report) where the report
    is `identical` or `differs by at most N/255 (mean M); differing conditions: ...`."""
    from PIL import Image

    from .metadata import read_recipe

    recipe = recipe or read_recipe(path)
    recorded = recorded_execution(path)
    result = rerun(recipe, execution=recorded, **options)
    with Image.open(path) as original:
        report = pixel_report(original, result.image, recorded.get("fingerprint"),
                              result.execution.get("fingerprint"))
    return result, report
