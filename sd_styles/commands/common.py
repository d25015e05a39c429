"""Argument types and options shared by several sub-commands (each bad value -> exit 2, one line)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import BadInput
from ..limits import check_seed, check_side


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """0 or more (0 switches a periodic action off)."""
    return _int_at_least(text, 0, "an integer >= 0")


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    try:
        return check_seed(value)
    except BadInput as err:  # the range rule lives in sd_styles.limits
        raise argparse.ArgumentTypeError(str(err)) from None


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def size(text: str) -> tuple[int, int]:
    """'WxH' (or one number for a square) with both sides positive multiples of 8."""
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 512x512, got {text!r}") from None
    try:
        return check_side(w, "width"), check_side(h, "height")
    except BadInput as err:  # the rule lives in sd_styles.limits
        raise argparse.ArgumentTypeError(str(err)) from None


DEVICE_HELP = "where to render: auto picks cuda, then mps, then cpu"
DTYPE_HELP = "weights' precision: auto is fp16 on a GPU (VAE kept in fp32) and fp32 on the CPU"


def add_device_options(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, with their help."""
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"], help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"], help=DTYPE_HELP)


def add_model_options(p: argparse.ArgumentParser, default_model: str | None, model_help: str | None = None) -> None:
    p.add_argument("--model", default=default_model, metavar="ID|PATH|tiny",
                   help=model_help or "hub id, local diffusers folder, or 'tiny' (the built-in random model)")
    add_device_options(p)


def check_out_dir(out: str | Path, flag: str = "--out") -> Path:
    """The output folder must be a folder (or creatable as one): checked before any model loads."""
    path = Path(out).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise BadInput(f"{flag} {out} {what}; give a folder (it is created when missing)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {out}: no permission to write in {probe}; give another folder")
    return path


def model_text_width(source: str) -> int | None:
    """The model's text-encoder width from its config, without loading weights (None: not at hand, or SDXL)."""
    from ..hub import cached_json
    from ..tiny import TINY_ID, TINY_TEXT_WIDTH

    if source == TINY_ID:
        return TINY_TEXT_WIDTH
    if cached_json(source, "text_encoder_2/config.json") is not None:
        return None  # SDXL: two encoders, checked when the concept loads
    config = cached_json(source, "text_encoder/config.json")
    width = (config or {}).get("hidden_size")
    return width if isinstance(width, int) else None


def check_concepts_fit(model: str, files, token_fix: str = "") -> None:
    """Wrong-width concepts and clashing tokens fail before the model loads (files: concepts.ConceptFile)."""
    from ..demo_concepts import DEMO_PREFIX
    from ..embedding_formats import TEXT, WIDTHS_HELP, family_of
    from ..tiny import TINY_ID

    width = model_text_width(model)
    for f in files:
        e = f.embedding
        if width is None or e.is_sdxl or e.widths[TEXT] == width:
            continue
        hint = (f"; for the tiny model use the random demo styles ({DEMO_PREFIX}random-1 ... {DEMO_PREFIX}random-5, "
                "or sd-styles run concepts/tiny_demo.toml)" if model == TINY_ID else "")
        raise BadInput(f"{f.source} has {e.widths[TEXT]}-wide vectors ({e.family}) but the model {model} has a "
                       f"{width}-wide text encoder ({family_of(width)}); {WIDTHS_HELP}{hint}")
    tokens = [f.token for f in files]
    if len(set(tokens)) < len(tokens):
        raise BadInput(f"two concepts want the same token ({', '.join(tokens)}); give each its own token"
                       + (f": {token_fix}" if token_fix else ""))


def print_paths(paths) -> None:
    """The contract: stdout carries only the paths written, one per line."""
    for path in paths:
        sys.stdout.write(f"{Path(path)}\n")
    sys.stdout.flush()
