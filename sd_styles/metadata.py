"""Every PNG carries its recipe: an A1111-compatible `parameters` chunk and a JSON recipe chunk."""

from __future__ import annotations

import json
import re
from importlib import metadata as pkg_metadata
from pathlib import Path

from PIL import Image, PngImagePlugin

from .atomic import atomic_save_image
from .errors import BadInput
from .recipe import Recipe

RECIPE_KEY = "sd-styles"          # PNG tEXt key of the JSON recipe
PARAMETERS_KEY = "parameters"     # A1111's key, read by its PNG Info tab and by sd-parsers
FORMAT_VERSION = 1
NEGATIVE_MARK = "Negative prompt:"  # A1111 starts the negative prompt at a line beginning with this

# our scheduler names -> A1111 (Sampler, Schedule type), as A1111 1.6+ writes them. The schedule is always
# explicit: A1111 reads a missing one as "Automatic", which means the sampler's own default
# (sd_samplers_kdiffusion: DPM++ 2M defaults to Karras), so a bare "DPM++ 2M" would be read as Karras.
# "Automatic" is only written where A1111's default is our spacing (Euler, LMS, Euler a have no default
# scheduler: model_wrap.get_sigmas, the same as "Uniform"; DDIM and PLMS are timestep samplers).
A1111_SAMPLERS = {"lms": ("LMS", "Automatic"), "ddim": ("DDIM", "Automatic"), "pndm": ("PLMS", "Automatic"),
                  "euler": ("Euler", "Automatic"), "euler-a": ("Euler a", "Automatic"),
                  "dpm++2m": ("DPM++ 2M", "Uniform"), "dpm++2m-karras": ("DPM++ 2M", "Karras")}

# A1111's infotext parser (modules/infotext_utils.py: re_param_code), to read our own output back
_A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_A1111_SIZE = re.compile(r"^(\d+)x(\d+)$")


def a1111_quote(value: object) -> str:
    """Quote a value as A1111 does (infotext_utils.quote), and also one that starts with a quote."""
    text = str(value)
    # A1111 quotes only on , \n : -- a bare value starting with '"' would be json-decoded by its reader
    if "," not in text and "\n" not in text and ":" not in text and not text.startswith('"'):
        return text
    return json.dumps(text, ensure_ascii=False)


def a1111_unquote(text: str) -> str:
    """Inverse of `a1111_quote` (infotext_utils.unquote)."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def a1111_fields(recipe: Recipe, loss_history: list[float] | None = None) -> dict[str, object]:
    """The `key: value` fields of the last line, in A1111's order, then our own keys."""
    sampler, schedule = A1111_SAMPLERS.get(recipe.scheduler, (recipe.scheduler, "Automatic"))
    fields: dict[str, object] = {
        "Steps": recipe.steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": float(recipe.cfg),  # A1111 writes the float: 7.5, 7.0
        "Seed": recipe.seed,
        "Size": f"{recipe.width}x{recipe.height}",
        "Model": recipe.model,
    }
    if recipe.refiner is not None:  # A1111's keys for an SDXL refiner
        fields["Refiner"] = recipe.refiner
        fields["Refiner switch at"] = recipe.refiner_switch
    if recipe.concepts:
        # A1111's own key for embeddings: "name: first 10 hex of sha256, ..."
        fields["TI hashes"] = ", ".join(f"{c.token}: {c.sha256[:10] or 'unknown'}" for c in recipe.concepts)
    fields["RNG"] = "CPU"  # initial noise comes from a CPU torch.Generator (A1111's "CPU" RNG source)
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
    return fields


def a1111_parameters(recipe: Recipe, loss_history: list[float] | None = None) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 50, Sampler: LMS, Schedule type: Automatic, ...` (A1111's layout)."""
    line = ", ".join(f"{k}: {a1111_quote(v)}" for k, v in a1111_fields(recipe, loss_history).items())
    negative = f"\n{NEGATIVE_MARK} {a1111_prompt_text(recipe.negative_prompt)}" if recipe.negative_prompt else ""
    return f"{a1111_prompt_text(recipe.prompt)}{negative}\n{line}".strip()  # A1111 strips the whole text too


def a1111_prompt_text(text: str) -> str:
    """A prompt as A1111-style readers must see it: the negative-prompt marker never appears inside it.

    A1111 switches to the negative prompt at a line starting `Negative prompt:` and sd-parsers splits
    at the marker anywhere, so inside a prompt (or a negative prompt) it is written `Negative prompt :`.
    The exact text stays in the JSON recipe.
    """
    return text.replace(NEGATIVE_MARK, NEGATIVE_MARK[:-1] + " :")


def parse_a1111_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, fields) as A1111's `parse_generation_parameters` reads them."""
    *lines, last = text.strip().split("\n")
    if len(_A1111_PARAM.findall(last)) < 3:  # no settings line: everything is prompt
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    fields: dict[str, str] = {}
    for key, value in _A1111_PARAM.findall(last):
        value = a1111_unquote(value)
        size = _A1111_SIZE.match(value)
        if size:
            fields[f"{key}-1"], fields[f"{key}-2"] = size.groups()
        else:
            fields[key] = value
    return "\n".join(prompt), "\n".join(negative), fields


def package_version(name: str) -> str:
    try:
        return pkg_metadata.version(name)
    except pkg_metadata.PackageNotFoundError:
        return "unknown"


def recipe_document(recipe: Recipe, loss_history: list[float] | None = None,
                    rendered_with: dict | None = None) -> dict:
    """The JSON chunk: the recipe plus provenance (package versions, device/dtype) and the loss history."""
    doc = {
        "format": FORMAT_VERSION,
        "recipe": recipe.to_dict(),
        "digest": recipe.digest(),
        "loss_history": list(loss_history or []),
        "versions": {p: package_version(p) for p in ("sd-styles", "torch", "diffusers", "transformers")},
    }
    if rendered_with:
        doc["rendered_with"] = dict(rendered_with)  # provenance only: not part of the digest
    return doc


def save_png(image: Image.Image, path: str | Path, recipe: Recipe, loss_history: list[float] | None = None,
             rendered_with: dict | None = None) -> Path:
    """Write the PNG with both chunks atomically (temp file + rename): never a partial file at `path`."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(recipe, loss_history))  # iTXt by itself if not Latin-1
    info.add_text(RECIPE_KEY, json.dumps(recipe_document(recipe, loss_history, rendered_with), sort_keys=True))
    return atomic_save_image(image, path, "PNG", pnginfo=info)


def read_text_chunks(path: str | Path) -> dict[str, str]:
    """All text chunks of an image, after decoding it fully (a truncated file fails here)."""
    try:
        with Image.open(path) as im:
            im.load()  # text chunks after IDAT only show up after load(); a truncated file raises
            return {k: v for k, v in im.info.items() if isinstance(v, str)}
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadInput(f"{path}: not a readable image ({err})") from None


def read_document(path: str | Path) -> dict:
    """The JSON recipe document stored in an image by `save_png`."""
    text = read_text_chunks(path).get(RECIPE_KEY)
    if text is None:
        raise BadInput(f"{path}: carries no sd-styles recipe (chunk {RECIPE_KEY!r} missing)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(f"{path}: the {RECIPE_KEY!r} chunk is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("recipe"), dict):
        raise BadInput(f"{path}: the {RECIPE_KEY!r} chunk holds no recipe")
    return doc


def read_recipe(path: str | Path) -> Recipe:
    """The recipe stored in an image (BadInput when it has none)."""
    try:
        return Recipe.from_dict(read_document(path)["recipe"]).check()  # a file is untrusted: every field checked
    except (TypeError, KeyError, ValueError, AttributeError) as err:  # BadInput is a ValueError: keep its words
        if isinstance(err, BadInput):
            raise BadInput(f"{path}: the stored recipe is invalid: {err}") from None
        raise BadInput(f"{path}: the stored recipe is incomplete or from an incompatible version ({err})") from None


def slug(text: str, limit: int = 48) -> str:
    """Lower-case letters, digits and dashes: safe in file names everywhere."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def cell_filename(recipe: Recipe, stem: str | None = None) -> str:
    """`<stem or prompt-slug>-s<seed>-<digest8>.png`: readable, and unique per recipe."""
    return f"{stem or slug(recipe.prompt) or 'image'}-s{recipe.seed}-{recipe.digest()[:8]}.png"
