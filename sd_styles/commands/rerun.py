"""`sd-styles rerun IMAGE`: re-render an image, pixel for pixel, from the recipe it carries."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import print_paths


def register(sub) -> None:
    p = sub.add_parser("rerun", help="re-render an image from its stored recipe")
    p.add_argument("image")
    p.add_argument("--model", help="use this hub id or folder instead of the recorded model")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    p.add_argument("--out", default="outputs", help="output folder (default outputs/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..metadata import cell_filename, read_recipe, save_png
    from ..reproduce import rerun

    recipe = read_recipe(args.image)
    res = rerun(recipe, model=args.model, device=args.device, dtype=args.dtype)
    print_paths([save_png(res.image, Path(args.out) / cell_filename(res.recipe), res.recipe, res.loss_history)])
    return 0
