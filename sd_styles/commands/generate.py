"""`sd-styles generate PROMPT`: one image per --seed, optionally loss-guided."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..schedulers import SCHEDULERS
from .common import add_model_options, finite_float, positive_int, print_paths, seed_int, size


def register(sub) -> None:
    p = sub.add_parser("generate", help="render a prompt, one image per --seed")
    p.add_argument("prompt")
    add_model_options(p, default_model="CompVis/stable-diffusion-v1-4")
    p.add_argument("--concept", action="append", default=[], metavar="SRC",
                   help="textual-inversion concept: hub id, .bin/.pt/.safetensors/.png file, or folder (repeatable)")
    p.add_argument("--token", help="trigger token for the one --concept given")
    p.add_argument("--negative", help="negative prompt (none by default: SDXL then uses zeros, unlike --negative '')")
    p.add_argument("--seed", type=seed_int, action="append", help="repeatable (default 0)")
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--cfg", type=finite_float, default=7.5)
    p.add_argument("--size", type=size, help="WxH, multiples of 8 (default: the model's native size)")
    p.add_argument("--scheduler", default="lms", choices=list(SCHEDULERS))
    p.add_argument("--loss", action="append", default=[], metavar="NAME[:SCALE]",
                   help="built-in loss (blue, color[=#rrggbb], warm, sepia, saturation, contrast, canny[=REF.png], "
                        "symmetry, clip=TEXT) or module:function; repeatable, summed")
    p.add_argument("--loss-every", type=positive_int, default=1, metavar="K", help="guide every K-th step")
    p.add_argument("--loss-start", type=finite_float, default=0.0, metavar="F",
                   help="first guided step as a fraction of the schedule (default 0)")
    p.add_argument("--loss-end", type=finite_float, default=1.0, metavar="F",
                   help="guidance stops before this fraction of the schedule (default 1)")
    p.add_argument("--loss-decoder", default="vae", metavar="vae|tiny|linear|PATH",
                   help="decoder for the loss: full VAE, TAESD from the hub, 4x3 latent-to-RGB map, "
                        "or a local AutoencoderTiny folder (default vae)")
    p.add_argument("--refiner", metavar="ID|PATH",
                   help="SDXL refiner (hub id, folder or tiny-sdxl-refiner) for the last steps of the schedule")
    p.add_argument("--refiner-switch", type=finite_float, metavar="F",
                   help="fraction of the schedule the base runs before the refiner takes over (default 0.8)")
    p.add_argument("--out", default="outputs", help="output folder (default outputs/)")
    p.set_defaults(func=run)


def guidance_from_args(args):
    """The --loss* options as a checked Guidance (None without --loss)."""
    from ..decoders import check_decoder
    from ..losses import check_loss, parse_loss_spec
    from ..recipe import Guidance, check_guidance

    if not args.loss:
        return None
    terms = tuple(check_loss(parse_loss_spec(s)) for s in args.loss)  # bad names fail now, before weights load
    return check_guidance(Guidance(losses=terms, every=args.loss_every, start=args.loss_start, end=args.loss_end,
                                   decoder=check_decoder(args.loss_decoder)))


def run(args: argparse.Namespace) -> int:
    from ..concepts import add_concepts, read_concept
    from ..errors import BadInput
    from ..metadata import cell_filename, save_png
    from ..models import load_model
    from ..rendering import make_recipe, render

    if args.token and len(args.concept) != 1:
        raise BadInput("--token needs exactly one --concept")
    if args.refiner_switch is not None and not args.refiner:
        raise BadInput("--refiner-switch needs --refiner")
    if args.refiner_switch is not None and not 0 < args.refiner_switch < 1:
        raise BadInput(f"--refiner-switch must be between 0 and 1 (exclusive), got {args.refiner_switch:g}")
    if args.refiner:
        from ..refiner import check_refiner_sources

        check_refiner_sources(args.model, args.refiner)
    guidance = guidance_from_args(args)  # validate everything cheap before loading weights
    for source in args.concept:
        read_concept(source, args.token)  # a missing or broken concept fails before the model loads
    model = load_model(args.model, device=args.device, dtype=args.dtype, refiner=args.refiner)
    add_concepts(model, args.concept, token=args.token)
    extra = {"width": args.size[0], "height": args.size[1]} if args.size else {}
    if args.refiner_switch is not None:
        extra["refiner_switch"] = args.refiner_switch
    recipes = [make_recipe(model, args.prompt, negative_prompt=args.negative, seed=seed, steps=args.steps,
                           cfg=args.cfg, scheduler=args.scheduler, guidance=guidance, **extra)
               for seed in (args.seed or [0])]
    out = Path(args.out)
    paths = []
    for res in render(model, recipes):
        paths.append(save_png(res.image, out / cell_filename(res.recipe), res.recipe, res.loss_history))
    print_paths(paths)
    return 0
