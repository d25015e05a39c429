"""Every PNG carries its recipe: an A1111-compatible `parameters` chunk and a JSON recipe chunk."""

from __future__ import annotations

import json
import os
import re
import tempfile
from importlib import metadata as pkg_metadata
from pathlib import Path

from PIL import Image, PngImagePlugin

from .errors import BadInput
from .recipe import Recipe

RECIPE_KEY = "sd-styles"          # PNG tEXt key of the JSON recipe
PARAMETERS_KEY = "parameters"     # A1111's key, read by its PNG Info tab and by sd-parsers
FORMAT_VERSION = 1

# our scheduler names -> A1111 sampler names (pre-1.6 style, Karras folded into the name)
A1111_SAMPLERS = {"lms": "LMS", "ddim": "DDIM", "pndm": "PLMS", "euler": "Euler", "euler-a": "Euler a",
                  "dpm++2m": "DPM++ 2M", "dpm++2m-karras": "DPM++ 2M Karras"}


def a1111_quote(value: object) -> str:
    """Quote a value as A1111 does (modules/generation_parameters_copypaste.py: quote)."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def a1111_parameters(recipe: Recipe, loss_history: list[float] | None = None) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 50, Sampler: LMS, CFG scale: 7.5, Seed: 101, Size: 512x512, ...`."""
    fields = {
        "Steps": recipe.steps,
        "Sampler": A1111_SAMPLERS.get(recipe.scheduler, recipe.scheduler),
        "CFG scale": f"{recipe.cfg:g}",
        "Seed": recipe.seed,
        "Size": f"{recipe.width}x{recipe.height}",
        "Model": recipe.model,
    }
    if recipe.concepts:
        fields["TI"] = ", ".join(f"{c.token}: {c.source}" for c in recipe.concepts)
    if recipe.guidance is not None:
        g = recipe.guidance
        fields["Loss"] = g.label()
        fields["Loss every"] = g.every
        if (g.start, g.end) != (0.0, 1.0):
            fields["Loss range"] = f"{g.start:g}-{g.end:g}"
        fields["Loss decoder"] = g.decoder
        if loss_history:
            fields["Final loss"] = f"{loss_history[-1]:.4g}"
    fields["Version"] = f"sd-styles {package_version('sd-styles')}"
    lines = [recipe.prompt]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    lines.append(", ".join(f"{k}: {a1111_quote(v)}" for k, v in fields.items()))
    return "\n".join(lines)


def package_version(name: str) -> str:
    try:
        return pkg_metadata.version(name)
    except pkg_metadata.PackageNotFoundError:
        return "unknown"


def recipe_document(recipe: Recipe, loss_history: list[float] | None = None) -> dict:
    """The JSON chunk: the recipe plus provenance (package versions) and the loss history."""
    return {
        "format": FORMAT_VERSION,
        "recipe": recipe.to_dict(),
        "digest": recipe.digest(),
        "loss_history": list(loss_history or []),
        "versions": {p: package_version(p) for p in ("sd-styles", "torch", "diffusers", "transformers")},
    }


def save_png(image: Image.Image, path: str | Path, recipe: Recipe, loss_history: list[float] | None = None) -> Path:
    """Write the PNG with both chunks atomically (temp file + rename): never a partial file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(recipe, loss_history))
    info.add_text(RECIPE_KEY, json.dumps(recipe_document(recipe, loss_history), sort_keys=True))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_document(path: str | Path) -> dict:
    """The JSON recipe document stored in an image by `save_png`."""
    try:
        with Image.open(path) as im:
            im.load()  # text chunks after IDAT only show up after load()
            text = im.info.get(RECIPE_KEY)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except OSError as err:
        raise BadInput(f"{path}: not a readable image ({err})") from None
    if text is None:
        raise BadInput(f"{path}: carries no sd-styles recipe (chunk {RECIPE_KEY!r} missing)")
    return json.loads(text)


def read_recipe(path: str | Path) -> Recipe:
    return Recipe.from_dict(read_document(path)["recipe"])


def cell_filename(recipe: Recipe, stem: str | None = None) -> str:
    """`<prompt-slug>-s<seed>-<digest8>.png`: readable, and unique per recipe."""
    slug = stem or re.sub(r"[^a-z0-9]+", "-", recipe.prompt.lower()).strip("-")[:48] or "image"
    return f"{slug}-s{recipe.seed}-{recipe.digest()[:8]}.png"
