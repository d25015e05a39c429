"""`sd-styles evaluate`: CLIP-I, CLIP-T and DINO of generated images against reference pictures, as JSON."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score generated images: CLIP-I, CLIP-T, DINO (prints JSON)")
    p.add_argument("--images", required=True, metavar="GEN", help="folder of generated images")
    p.add_argument("--reference", required=True, metavar="REF", help="folder of reference (training) pictures")
    p.add_argument("--prompt", required=True, help="the prompt the images were generated from")
    p.add_argument("--token", help="placeholder removed from the prompt for CLIP-T (default: every <...> word)")
    p.add_argument("--replace-with", metavar="WORD", help="put WORD where the placeholder was instead of removing it")
    p.add_argument("--clip", default="openai/clip-vit-base-patch32", metavar="ID|PATH",
                   help="CLIP model (default openai/clip-vit-base-patch32, the textual-inversion paper's)")
    p.add_argument("--dino", default="facebook/dino-vits16", metavar="ID|PATH|none",
                   help="DINO ViT model (default facebook/dino-vits16, DreamBench's); 'none' skips DINO")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    dino = None if args.dino.lower() == "none" else args.dino
    result = evaluate(args.images, args.reference, args.prompt, clip=args.clip, dino=dino, token=args.token,
                      replace_with=args.replace_with, device=args.device)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
