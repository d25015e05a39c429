"""Run an experiment: render its cells batch by batch, save after each batch, skip finished cells.

A finished cell is recognised by the recipe inside the file (its digest), not by its name. Every file
is written atomically, so a run killed at any moment loses at most the batch in flight and leaves no
partial file; running it again completes it. Then come the grid, the blog export and the manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from PIL import Image

from .atomic import atomic_write_text, clean_stale_temps
from .errors import BadInput
from .experiment import Cell, Experiment, load_styles, plan_cells
from .metadata import read_document, save_png
from .recipe import Recipe

log = logging.getLogger(__name__)

OnWritten = Callable[[Path], None]
MANIFEST_FORMAT = 1


@dataclass
class CellResult:
    """One cell of an experiment, rendered now or read back from its finished file."""

    cell: Cell
    image: Image.Image
    loss_history: list[float]
    path: Path | None = None       # where it is saved (None: only in memory)
    rendered: bool = True          # False when an earlier run had already finished it

    @property
    def recipe(self) -> Recipe:
        """The cell's recipe (as `rendering.Result.recipe`, so plots and exports take either)."""
        return self.cell.recipe

    @property
    def final_loss(self) -> float | None:
        return self.loss_history[-1] if self.loss_history else None


@dataclass
class RunReport:
    """What `run_experiment` produced."""

    folder: Path
    results: list[CellResult]
    grid: Path
    manifest: Path
    export: list[Path]
    written: list[Path]            # files written by this run, in order (stdout of `sd-styles run`)


def _verifiable(recipe: Recipe) -> bool:
    # a loss given as an in-memory function (notebooks) is not in the digest: its cells are always redone
    return recipe.guidance is None or all(t.fn is None for t in recipe.guidance.losses)


def finished_cell(path: Path, cell: Cell) -> CellResult | None:
    """The saved cell at `path` if it is complete and was made from exactly `cell.recipe`."""
    if not path.is_file() or not _verifiable(cell.recipe):
        return None
    try:
        doc = read_document(path)  # decodes the whole image: a damaged file is not finished
        if doc.get("digest") != cell.recipe.digest():
            return None
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (BadInput, OSError, ValueError) as err:
        log.warning("re-rendering %s: %s", path.name, err)
        return None
    return CellResult(cell, image, list(doc.get("loss_history", [])), path, rendered=False)


def _batches(cells: Sequence[tuple[int, Cell]], batch_size: int) -> Iterator[list[tuple[int, Cell]]]:
    """(index, cell) pairs grouped as render() batches them, in order, at most batch_size per batch."""
    groups: dict[tuple, list[tuple[int, Cell]]] = {}
    for item in cells:
        groups.setdefault(item[1].recipe.batch_key(), []).append(item)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def render_cells(model, cells: Sequence[Cell], *, out_dir: str | Path | None = None, batch_size: int = 8,
                 progress: bool = True,
                 on_written: OnWritten | None = None) -> list[CellResult]:
    """Render `cells` in batches; with `out_dir`, skip finished files and save each batch as it completes."""
    from tqdm.auto import tqdm

    from .rendering import render

    if batch_size < 1:
        raise BadInput(f"batch size must be >= 1, got {batch_size}")
    folder = Path(out_dir) if out_dir is not None else None
    results: dict[int, CellResult] = {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(folder)
        for i, cell in enumerate(cells):
            done = finished_cell(folder / cell.filename, cell)
            if done is not None:
                results[i] = done
        if results:
            log.info("%d of %d cells already finished in %s", len(results), len(cells), folder)
    pending = [(i, c) for i, c in enumerate(cells) if i not in results]
    rendered_with = {"device": str(model.device), "dtype": str(model.dtype).removeprefix("torch.")}
    with tqdm(total=len(pending), desc="cells", unit="cell", disable=not progress or not pending) as bar:
        for batch in _batches(pending, batch_size):
            rendered = render(model, [c.recipe for _, c in batch], batch_size=len(batch), progress=progress)
            for (i, cell), res in zip(batch, rendered):
                path = None
                if folder is not None:  # saved right away: a kill loses at most the batch being rendered
                    path = save_png(res.image, folder / cell.filename, res.recipe, res.loss_history, rendered_with)
                    if on_written:
                        on_written(path)
                results[i] = CellResult(cell, res.image, res.loss_history, path)
            bar.update(len(batch))
    return [results[i] for i in range(len(cells))]


def render_plain(model, exp: Experiment, *, out: str | Path | None = None, **options) -> list[CellResult]:
    """The plain row: every style with its seed, no loss (saved under out/NAME when `out` is given)."""
    return render_cells(model, plan_cells(model, exp, ["plain"]), out_dir=_folder(exp, out), **options)


def render_guided(model, exp: Experiment, *, out: str | Path | None = None, **options) -> list[CellResult]:
    """The guided row: the same styles and seeds, steered by the experiment's loss."""
    return render_cells(model, plan_cells(model, exp, ["guided"]), out_dir=_folder(exp, out), **options)


def _folder(exp: Experiment, out: str | Path | None) -> Path | None:
    return None if out is None else Path(out) / exp.name


def export_run(exp: Experiment, results: Sequence[CellResult], out: str | Path, *, export_format: str = "jpeg",
               on_written: OnWritten | None = None) -> tuple[Path, list[Path], Path]:
    """Save unsaved cells, then write grid.png, the blog export and manifest.json under out/NAME."""
    from .export import export_blog
    from .grid import results_grid

    folder = Path(out) / exp.name
    clean_stale_temps(folder / "blog")  # debris of an export killed mid-write
    emit = on_written or (lambda p: None)
    for r in results:
        if r.path is None:
            r.path = save_png(r.image, folder / r.cell.filename, r.cell.recipe, r.loss_history)
            emit(r.path)
    grid = save_grid(results_grid(results), folder / "grid.png")
    emit(grid)
    export = export_blog(exp, results, grid, folder / "blog", fmt=export_format)
    for p in export:
        emit(p)
    manifest = write_manifest(folder / "manifest.json", exp, results, grid, export)
    emit(manifest)
    return grid, export, manifest


def save_grid(image: Image.Image, path: Path) -> Path:
    """The grid as a PNG, atomically."""
    from .atomic import atomic_save_image

    return atomic_save_image(image, path, "PNG", optimize=False)


def manifest_entry(r: CellResult, folder: Path) -> dict:
    """One cell in manifest.json."""
    recipe, g = r.cell.recipe, r.cell.recipe.guidance
    return {"column": r.cell.column, "style": r.cell.concept, "token": r.cell.token, "kind": r.cell.kind,
            "seed": recipe.seed, "file": _relative(r.path, folder), "digest": recipe.digest(),
            "loss": g.label() if g is not None else None, "final_loss": r.final_loss}


def write_manifest(path: Path, exp: Experiment, results: Sequence[CellResult], grid: Path,
                   export: Sequence[Path]) -> Path:
    """manifest.json (atomic): every cell with its digest, file, seed, style, kind and final loss."""
    folder = path.parent
    doc = {
        "format": MANIFEST_FORMAT, "name": exp.name, "prompt": exp.prompt, "model": exp.model,
        "loss": exp.guidance.label() if exp.guidance is not None else None,
        "grid": _relative(grid, folder), "export": [_relative(p, folder) for p in export],
        "cells": [manifest_entry(r, folder) for r in results],
    }
    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def _relative(path: Path | None, folder: Path) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def run_experiment(exp: Experiment, *, out: str | Path = "outputs", model=None, device: str = "auto",
                   dtype: str = "auto", batch_size: int = 8,
                   progress: bool = True, export_format: str = "jpeg",
                   on_written: OnWritten | None = None) -> RunReport:
    """Load (unless `model` is given), render every cell with resume, then grid, export and manifest."""
    from .models import load_model

    written: list[Path] = []

    def emit(path: Path) -> None:
        written.append(path)
        if on_written:
            on_written(path)

    if model is None:
        model = load_model(exp.model, device=device, dtype=dtype, refiner=exp.refiner)
    elif exp.refiner and (model.refiner is None or model.refiner.source != exp.refiner):
        from .refiner import load_refiner

        load_refiner(model, exp.refiner)
    load_styles(model, exp, progress=progress)
    folder = Path(out) / exp.name
    results = render_cells(model, plan_cells(model, exp), out_dir=folder, batch_size=batch_size,
                           progress=progress, on_written=emit)
    grid, export, manifest = export_run(exp, results, out, export_format=export_format, on_written=emit)
    return RunReport(folder, results, grid, manifest, export, written)
