"""`sd-styles run EXPERIMENT.toml`: every style plain (and guided), resumable; grid, manifest, blog export."""

from __future__ import annotations

import argparse

from .common import add_model_options, positive_int, print_paths, seed_int


def seed_list(text: str) -> list[int]:
    """'101,202,303' -> [101, 202, 303] (each a valid seed)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds such as 1,2,3, got {text!r}")
    return [seed_int(p) for p in parts]


def register(sub) -> None:
    p = sub.add_parser("run", help="run an experiment file: styles x (plain, guided), grid, manifest, export")
    p.add_argument("experiment", metavar="EXPERIMENT.toml")
    add_model_options(p, default_model=None)
    p.add_argument("--seeds", type=seed_list, metavar="A,B,C,...", help="one seed per style, replacing the file's")
    p.add_argument("--out", default="outputs", help="output folder; files go to OUT/NAME/ (default outputs/)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="cells stacked into one UNet / VAE call (default 8); each image records its call shape")
    p.add_argument("--exact", action="store_true",
                   help="one cell per model call (the shape of a cell rendered alone; slower on a GPU)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="resume even if finished cells were made under another execution fingerprint")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first call per shape)")
    p.add_argument("--channels-last", action="store_true", help="UNet in channels_last memory format")
    p.add_argument("--export-format", default="jpeg", choices=["jpeg", "webp"], help="blog copies (default jpeg)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..concepts import read_concept
    from ..experiment import load_experiment, with_seeds
    from ..runner import run_experiment

    exp = load_experiment(args.experiment)  # every mistake in the file fails here, before weights load
    if args.seeds is not None:
        exp = with_seeds(exp, args.seeds)
    if args.model:
        exp = replace(exp, model=args.model)
    if exp.refiner:
        from ..refiner import check_refiner_sources

        check_refiner_sources(exp.model, exp.refiner)
    for style in exp.styles:
        read_concept(style.concept, style.token)  # a missing or broken concept fails before weights load
    # each path is printed as soon as it is written: a caller sees finished cells even if the run dies
    # under `accelerate launch` each process renders its share of the call batches (see runner.py)
    run_experiment(exp, out=args.out, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                   mode="exact" if args.exact else "stacked", allow_mixed=args.allow_mixed, compile=args.compile,
                   channels_last=args.channels_last, export_format=args.export_format,
                   on_written=lambda path: print_paths([path]))
    return 0
