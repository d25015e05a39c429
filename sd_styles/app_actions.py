"""What the app does, as plain functions (no Gradio here): form values -> recipes, concepts, files, PNG info.

Everything a page or an API client sends is untrusted: numbers are range-checked, only built-in losses
and decoders are accepted (a `module:function` loss would import code, `canny=FILE` would read a server
file), the hub box takes only hub ids, and uploaded embeddings are copied under a sanitised name into the
session folder and then parsed by the same safe loader as the command line (`sd_styles.concepts`).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

from .catalog import CatalogStyle
from .errors import BadInput
from .recipe import Guidance, LossTerm, Recipe

MAX_BATCH = 16                 # images per click
MAX_SIDE = 2048                # pixels; larger would only exhaust memory
SEED_LIMIT = 2**63             # seeds are 0..2**63-1, as on the command line
RANDOM_SEEDS = 2**32           # -1 draws from this range (A1111's convention)
UPLOAD_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".png")
NO_LOSS = "none"


@dataclass(frozen=True)
class GenerateForm:
    """The Generate tab's settings, checked (see `check_form`)."""

    prompt: str
    negative_prompt: str = ""
    seed: int = -1                 # -1: a random seed; image i of a batch uses seed + i
    batch_count: int = 1           # images per click, rendered one after the other
    steps: int = 20
    cfg: float = 7.5               # classifier-free guidance scale
    width: int = 512               # multiples of 8
    height: int = 512
    scheduler: str = "lms"
    styles: tuple[str, ...] = ()   # catalog style names
    hub_concepts: str = ""         # more hub ids (org/name), comma or newline separated
    loss: str = NO_LOSS            # a built-in loss name, or "none"
    loss_arg: str = ""             # color: #rrggbb; clip: the text
    loss_scale: float | None = None  # None: the loss's own default
    loss_every: int = 1            # guide every k-th step
    loss_start: float = 0.0        # guided fraction of the schedule
    loss_end: float = 1.0
    loss_decoder: str = "vae"      # vae | tiny | linear (no folders from a page)


FORM_FIELDS = tuple(f.name for f in fields(GenerateForm))


def form_int(name: str, value, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from a form value (Gradio sends floats for numbers)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or not lo <= number <= hi:
        raise BadInput(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    return int(number)


def form_float(name: str, value, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] from a form value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise BadInput(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}")
    return number


def check_form(form: GenerateForm) -> GenerateForm:
    """The form with every value coerced and range-checked (BadInput names the field and what is allowed)."""
    if not isinstance(form.prompt, str) or not form.prompt.strip():
        raise BadInput("type a prompt first")
    side = {n: form_int(n, getattr(form, n), 8, MAX_SIDE) for n in ("width", "height")}
    for name, value in side.items():
        if value % 8:
            raise BadInput(f"{name} must be a multiple of 8, got {value}")
    scale = None if form.loss_scale in (None, "") else form_float("loss scale", form.loss_scale, -1e6, 1e6)
    return replace(
        form, negative_prompt=form.negative_prompt or "", seed=form_int("seed", form.seed, -1, SEED_LIMIT - 1),
        batch_count=form_int("batch count", form.batch_count, 1, MAX_BATCH), steps=form_int("steps", form.steps, 1, 1000),
        cfg=form_float("CFG scale", form.cfg, 0.0, 100.0), styles=tuple(form.styles or ()), **side,
        hub_concepts=form.hub_concepts or "", loss=form.loss or NO_LOSS, loss_arg=(form.loss_arg or "").strip(),
        loss_scale=scale, loss_every=form_int("loss every", form.loss_every, 1, 1000),
        loss_start=form_float("loss start", form.loss_start, 0.0, 1.0), loss_end=form_float("loss end", form.loss_end, 0.0, 1.0))


def seeds_for(seed: int, count: int, rng: random.Random | None = None) -> list[int]:
    """Image i uses seed + i; seed -1 draws a random first seed."""
    if seed < 0:
        seed = (rng or random.SystemRandom()).randrange(RANDOM_SEEDS)
    if seed + count > SEED_LIMIT:
        raise BadInput(f"seed + batch count must stay below 2**63, got seed {seed} and {count} images")
    return [seed + i for i in range(count)]


def app_guidance(loss: str, arg: str = "", scale: float | None = None, every: int = 1, start: float = 0.0,
                 end: float = 1.0, decoder: str = "vae") -> Guidance | None:
    """Loss guidance from the form: built-in losses only, no file arguments (None for 'none')."""
    from .decoders import DECODER_NAMES, check_decoder
    from .losses import BUILTIN_LOSSES, check_loss, resolve_scales
    from .recipe import check_guidance

    if not loss or loss == NO_LOSS:
        return None
    if loss not in BUILTIN_LOSSES:
        raise BadInput(f"unknown loss {loss!r}; allowed here: {', '.join(BUILTIN_LOSSES)}")
    if loss == "canny" and arg:
        raise BadInput("canny takes no reference image in the app (files on the server are not read)")
    if decoder not in DECODER_NAMES:
        raise BadInput(f"loss decoder must be one of {', '.join(DECODER_NAMES)}, got {decoder!r}")
    term = check_loss(LossTerm(f"{loss}={arg}" if arg else loss, scale))
    guidance = Guidance(losses=(term,), every=every, start=start, end=end, decoder=check_decoder(decoder))
    return check_guidance(resolve_scales(guidance))  # no scale given: the loss's own default, recorded


def form_recipes(model, form: GenerateForm, rng: random.Random | None = None) -> list[Recipe]:
    """One recipe per image of the batch, for `model` (its concepts already loaded)."""
    from .rendering import make_recipe

    guidance = app_guidance(form.loss, form.loss_arg, form.loss_scale, form.loss_every, form.loss_start,
                            form.loss_end, form.loss_decoder)
    return [make_recipe(model, form.prompt, negative_prompt=form.negative_prompt, seed=s, steps=form.steps,
                        cfg=form.cfg, scheduler=form.scheduler, guidance=guidance, width=form.width,
                        height=form.height)
            for s in seeds_for(form.seed, form.batch_count, rng)]


def safe_name(name: str, limit: int = 64) -> str:
    """A file name from an untrusted one: no folders, letters, digits, '.', '_' and '-' only."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(name).replace("\\", "/")).name)
    base = re.sub(r"-{2,}", "-", base).strip(".-")
    return base[-limit:].lstrip(".-") or "file"


def session_folder(out: str | Path, session: str | None) -> Path:
    """out/sessions/<session>: one folder per browser session (the id is sanitised, never a path)."""
    key = re.sub(r"[^A-Za-z0-9]", "", session or "")[:32] or "anonymous"
    folder = Path(out).resolve() / "sessions" / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def store_upload(path: str | Path, folder: Path) -> Path:
    """Copy an uploaded embedding to folder/concepts/<sha12>/<safe name>, refusing unknown kinds."""
    from .concept_sources import MAX_BYTES

    src = Path(path)
    name = safe_name(src.name)
    if not name.lower().endswith(UPLOAD_SUFFIXES):
        raise BadInput(f"{name}: embeddings are {', '.join(UPLOAD_SUFFIXES)} files")
    if src.stat().st_size > MAX_BYTES:
        raise BadInput(f"{name} is far too large for a textual-inversion embedding")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    dest = folder / "concepts" / digest / name
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    return dest


def concept_requests(catalog: Sequence[CatalogStyle], styles: Sequence[str], hub_text: str,
                     uploads: Sequence[str] | None, token: str, folder: Path) -> list[tuple[str, str | None]]:
    """(source, token override) for every concept the form asks for; uploads are stored first."""
    from .concept_sources import is_hub_id

    by_name = {s.name: s for s in catalog}
    wanted: list[tuple[str, str | None]] = []
    for name in styles:
        if name not in by_name:
            raise BadInput(f"no style {name!r} in the catalog")
        wanted.append((by_name[name].concept, by_name[name].token))
    for hub_id in filter(None, (s.strip() for s in re.split(r"[,\n]", hub_text or ""))):
        if not is_hub_id(hub_id):
            raise BadInput(f"{hub_id!r} is not a hub id (org/name such as sd-concepts-library/line-art); "
                           "upload files with the upload box")
        wanted.append((hub_id, None))
    files = [store_upload(p, folder) for p in (uploads or [])]
    token = (token or "").strip() or None
    if token and len(files) != 1:
        raise BadInput("a token for uploads needs exactly one uploaded file")
    wanted += [(str(f), token) for f in files]
    return wanted


def use_concepts(model, requests: Sequence[tuple[str, str | None]]) -> list[str]:
    """Load exactly these concepts (safe loader; all read before any change) and unload the others."""
    from .concepts import add_concept, read_concept, remove_concept

    tokens = [read_concept(source, token).token for source, token in requests]
    for token in [t for t in model.concepts if t not in tokens]:
        remove_concept(model, token)  # a job is a function of its own form, not of earlier sessions
    for source, token in requests:
        add_concept(model, source, token=token)
    return tokens


def render_to_file(model, recipe: Recipe, folder: Path, callback: Callable[[dict], None] | None = None) -> Path:
    """Render one recipe and save it as a PNG with its metadata (the file the gallery serves)."""
    from .metadata import cell_filename
    from .rendering import render

    [res] = render(model, [recipe], callback=callback, progress=False)
    return res.save(folder / cell_filename(res.recipe))  # with its execution record, as `generate` saves
