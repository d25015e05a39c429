"""The Compare styles tab: the fixed-seed style comparison of `sd-styles run`, built from a form.

The form becomes an experiment table checked by `sd_styles.experiment.parse_experiment` (the file
format's own validation) and is run by `sd_styles.runner.run_experiment`, so cells, grid, manifest and
blog export are exactly what the command line writes. Only built-in losses are accepted (see app_actions).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .app_actions import form_float, form_int, app_guidance, concept_requests
from .catalog import CatalogStyle
from .errors import BadInput

COMPARE_NAME = "compare"        # the experiment name: files go to <session>/compare/compare/
MAX_STYLES = 8


@dataclass(frozen=True)
class CompareForm:
    """The Compare tab's settings (one seed per style; a loss adds the guided row)."""

    prompt: str                    # with {style}
    styles: tuple[str, ...]        # catalog names
    seeds: str                     # comma-separated, one per style (catalog styles first, then uploads)
    steps: int = 20
    cfg: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str = "lms"
    loss: str = "none"
    loss_arg: str = ""
    loss_scale: float | None = None
    loss_every: int = 1
    loss_decoder: str = "vae"


def parse_seeds(text: str, count: int) -> list[int]:
    """'101, 202, 303' -> [101, 202, 303], exactly one per style."""
    parts = [p.strip() for p in str(text or "").replace(";", ",").split(",") if p.strip()]
    seeds = [form_int("seed", p, 0, 2**63 - 1) for p in parts]
    if len(seeds) != count:
        raise BadInput(f"give one seed per style: {count} style(s) but {len(seeds)} seed(s) ({text!r})")
    return seeds


def compare_experiment(model, catalog: Sequence[CatalogStyle], form: CompareForm, uploads: Sequence[str] | None,
                       folder: Path):
    """The experiment the form describes (uploads are stored in `folder` and used as extra styles)."""
    from .experiment import parse_experiment

    wanted = concept_requests(catalog, form.styles, "", uploads, "", folder)
    if not wanted:
        raise BadInput("pick at least one style (or upload an embedding)")
    if len(wanted) > MAX_STYLES:
        raise BadInput(f"at most {MAX_STYLES} styles at a time, got {len(wanted)}")
    seeds = parse_seeds(form.seeds, len(wanted))
    styles = [{"concept": src, "seed": seed, **({"token": tok} if tok else {})}
              for (src, tok), seed in zip(wanted, seeds)]
    table = {"name": COMPARE_NAME, "model": model.source, "prompt": form.prompt or "",
             "steps": form_int("steps", form.steps, 1, 1000), "guidance_scale": form_float("CFG scale", form.cfg, 0, 100),
             "width": form_int("width", form.width, 8, 2048), "height": form_int("height", form.height, 8, 2048),
             "scheduler": form.scheduler, "styles": styles}
    scale = None if form.loss_scale in (None, "") else form_float("loss scale", form.loss_scale, -1e6, 1e6)
    guidance = app_guidance(form.loss, form.loss_arg, scale, form_int("loss every", form.loss_every, 1, 1000),
                            decoder=form.loss_decoder)
    if guidance is not None:
        term = guidance.losses[0]
        table["guidance"] = {"loss": term.name, "scale": float(term.scale), "every": guidance.every,
                             "decoder": guidance.decoder}
    return parse_experiment(table, where="compare form")


def run_compare(model, exp, out: Path, on_cell: Callable[[Path], None] | None = None,
                callback: Callable[[dict], None] | None = None):
    """Run it exactly as `sd-styles run` does (same call batches, so the same pixels; resume included).

    `callback` runs after every sampler step: Stop raises there, within a step; the cells of the call batch
    in flight are not saved (a later Compare resumes and renders that batch whole)."""
    from .runner import run_experiment

    return run_experiment(exp, out=out, model=model, progress=False, on_written=on_cell, callback=callback)


def zip_export(report, dest: Path) -> Path:
    """The blog export (web copies, post.md) plus grid.png as one zip, written atomically."""
    from .atomic import atomic_write

    files = [Path(report.grid), *map(Path, report.export)]
    blog = Path(report.folder)

    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f.relative_to(blog).as_posix())

    return atomic_write(dest, write)


def labelled_cells(report) -> list[tuple[str, str]]:
    """(file, caption) per cell for the gallery: style token, plain/guided and seed."""
    return [(str(r.path), f"{r.cell.token} · {r.cell.kind} · seed {r.recipe.seed}") for r in report.results]
