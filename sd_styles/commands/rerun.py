"""`sd-styles rerun IMAGE`: re-render an image from the recipe and call shape it carries; report how it compares.

The recipe is untrusted input: it is checked whole before any weights load, and a `module:function`
loss named in it is imported only when the user allows that module with --allow-loss-module.
"""

from __future__ import annotations

import argparse

from .common import add_device_options, check_out_dir, print_paths


def register(sub) -> None:
    p = sub.add_parser("rerun", help="re-render an image from its stored recipe")
    p.add_argument("image", help="a PNG written by sd-styles (its recipe is read from the file)")
    p.add_argument("--model", metavar="ID|PATH|tiny",
                   help="use this hub id or folder instead of the recorded model (default: the recorded model, "
                        "pinned to the recorded hub revision)")
    add_device_options(p)
    p.add_argument("--allow-loss-module", action="append", default=[], metavar="MODULE",
                   help="import this Python module for a module:function loss named in the image (repeatable); "
                        "without it such a recipe is refused, since importing a module runs its code")
    p.add_argument("--out", default="outputs", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from .. import hub
    from ..metadata import cell_filename, read_recipe
    from ..reproduce import check_rerun, load_recorded_model, rerun_image
    from ..truncation import check_prompt_length
    from .common import check_concepts_fit
    out = check_out_dir(args.out)
    recipe = read_recipe(args.image)  # every field checked: a bad value is exit 2 before any weights load
    g = recipe.guidance
    hub.preflight(model=args.model or recipe.model, model_revision=None if args.model else recipe.model_revision,
                  concepts=[(c.source, c.revision) for c in recipe.concepts],
                  losses=[t.name for t in g.losses] if g else (), decoder=g.decoder if g else None)

    from ..concepts import read_concept
    from ..decoders import check_decoder
    check_rerun(recipe, allow_loss_modules=args.allow_loss_module)
    if recipe.guidance is not None:
        check_decoder(recipe.guidance.decoder)
    files = [read_concept(ref.source, ref.token, ref.revision) for ref in recipe.concepts]
    check_concepts_fit(args.model or recipe.model, files)
    model = load_recorded_model(recipe, args.model, device=args.device, dtype=args.dtype)  # pinned revision
    notes = check_prompt_length(model, recipe)
    # the recorded call shape is rebuilt; stderr says `identical` or how far off and under which conditions
    res, report = rerun_image(args.image, recipe, model=model, allow_loss_modules=args.allow_loss_module)
    print_paths([res.save(out / cell_filename(res.recipe), notes)])
    print(report, file=sys.stderr)
    return 0
