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
                   help="cells sharing one denoising loop (default 8; each model call still sees one cell)")
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
    run_experiment(exp, out=args.out, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                   export_format=args.export_format, on_written=lambda path: print_paths([path]))
    return 0
