"""`sd-styles run EXPERIMENT.toml`: every style plain (and guided), resumable; grid, manifest, blog export."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_options, check_concepts_fit, check_out_dir, positive_int, print_paths, seed_int


def seed_list(text: str) -> list[int]:
    """'101,202,303' -> [101, 202, 303] (each a valid seed)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds such as 1,2,3, got {text!r}")
    return [seed_int(p) for p in parts]


def register(sub) -> None:
    p = sub.add_parser("run", help="run an experiment file: styles x (plain, guided), grid, manifest, export")
    p.add_argument("experiment", metavar="EXPERIMENT.toml",
                   help="experiment file (e.g. concepts/tiny_demo.toml offline, concepts/five_styles.toml)")
    add_model_options(p, default_model=None,
                      model_help="hub id, local diffusers folder, or 'tiny'; overrides the file's model "
                                 "(default: the model the file names)")
    p.add_argument("--seeds", type=seed_list, metavar="A,B,C,...", help="one seed per style, replacing the file's")
    p.add_argument("--out", default="outputs", help="output folder; files go to OUT/NAME/")
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

    from ..experiment import load_experiment, with_seeds

    preflight_file(args.experiment, args.model)  # an uncached hub file fails in seconds, before torch loads
    exp = load_experiment(args.experiment)  # every mistake in the file fails here, before weights load
    if args.seeds is not None:
        exp = with_seeds(exp, args.seeds)
    if args.model:
        exp = replace(exp, model=args.model)
    check_out_dir(Path(args.out) / exp.name)
    if exp.refiner:
        from ..refiner import check_refiner_sources

        check_refiner_sources(exp.model, exp.refiner)

    from ..concepts import read_concept
    from ..runner import run_experiment

    files = [read_concept(style.concept, style.token) for style in exp.styles]  # missing / broken: fail now
    # wrong width or two styles with one token: before weights load
    check_concepts_fit(exp.model, files, token_fix=f"set a distinct `token = \"<name>\"` in each [[styles]] table of "
                                                   f"{args.experiment} that shares one")
    # each path is printed as soon as it is written: a caller sees finished cells even if the run dies
    # under `accelerate launch` each process renders its share of the call batches (see runner.py)
    run_experiment(exp, out=args.out, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                   mode="exact" if args.exact else "stacked", allow_mixed=args.allow_mixed, compile=args.compile,
                   channels_last=args.channels_last, export_format=args.export_format,
                   on_written=lambda path: print_paths([path]))
    return 0


def preflight_file(path: str, model: str | None) -> None:
    """The hub files an experiment file names, checked from its raw TOML (validation proper comes next)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    from .. import hub
    from ..hub import DEFAULT_MODEL

    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # load_experiment says what is wrong with the file
    styles = doc.get("styles") if isinstance(doc.get("styles"), list) else []
    concepts = [s["concept"] for s in styles if isinstance(s, dict) and isinstance(s.get("concept"), str)
                and not (Path(path).parent / s["concept"]).exists()]  # paths are relative to the file
    g = doc.get("guidance") if isinstance(doc.get("guidance"), dict) else {}
    loss = g.get("loss")
    names = [loss] if isinstance(loss, str) else [t.get("name") for t in loss if isinstance(t, dict)] \
        if isinstance(loss, list) else []
    hub.preflight(model=model or str(doc.get("model", DEFAULT_MODEL)), concepts=concepts, losses=names,
                  decoder=g.get("decoder") if isinstance(g.get("decoder"), str) else None)
