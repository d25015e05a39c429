"""`sd-styles rerun IMAGE`: re-render an image from the recipe and call shape it carries; report how it compares."""

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
    import sys

    from ..metadata import cell_filename
    from ..reproduce import rerun_image

    # the recorded call shape is rebuilt; stderr says `identical` or how far off and under which conditions
    res, report = rerun_image(args.image, model=args.model, device=args.device, dtype=args.dtype)
    print_paths([res.save(Path(args.out) / cell_filename(res.recipe))])
    print(report, file=sys.stderr)
    return 0
