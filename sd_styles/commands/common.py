"""Argument types and options shared by several sub-commands (each bad value -> exit 2, one line)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import BadInput
from ..limits import check_seed, check_side


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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


def add_model_options(p: argparse.ArgumentParser, default_model: str | None) -> None:
    p.add_argument("--model", default=default_model, help="hub id, local diffusers folder, or 'tiny'")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])


def print_paths(paths) -> None:
    """The contract: stdout carries only the paths written, one per line."""
    for path in paths:
        sys.stdout.write(f"{Path(path)}\n")
    sys.stdout.flush()
