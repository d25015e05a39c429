"""Run an experiment: render its planned call batches, save after each, skip finished cells, shard across processes.

The plan (`rendering.plan_chunks` over every cell of the experiment) fixes each cell's call shape; a
resumed run re-renders a partly finished call batch whole (the finished cells are throw-away padding),
so a resumed cell sees exactly the call it would have had in an uninterrupted run. A finished cell is
recognised by the recipe inside the file (its digest); finished cells made under another execution
fingerprint are refused unless `allow_mixed`. Under `accelerate launch`, call batch k goes to process
k mod N (whole batches: sharding never changes pixels); the main process assembles grid, manifest and
export once every process has finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .atomic import clean_stale_temps
from .errors import BadInput, RuntimeFailure
from .experiment import Cell, CellResult, Experiment, load_styles, plan_cells
from .export import OnWritten, export_run, manifest_entry, save_grid, write_manifest  # noqa: F401 (re-exported)
from .fingerprint import differing_conditions, execution_fingerprint
from .metadata import read_document, save_png
from .recipe import Recipe
from .sampling import StepCallback
from .speed import optimize, speed_state

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What `run_experiment` produced (grid, manifest and export only on the main process)."""

    folder: Path
    results: list[CellResult]
    grid: Path | None
    manifest: Path | None
    export: list[Path]
    written: list[Path]            # files written by this process, in order (stdout of `sd-styles run`)


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
        from PIL import Image

        with Image.open(path) as im:
            image = im.convert("RGB")
    except (BadInput, OSError, ValueError) as err:
        log.warning("re-rendering %s: %s", path.name, err)
        return None
    execution = doc.get("rendered_with") if isinstance(doc.get("rendered_with"), dict) else {}
    return CellResult(cell, image, list(doc.get("loss_history", [])), path, rendered=False, execution=execution)


def check_not_mixed(model, done: dict[int, CellResult], plan: list[list[int]], mode: str) -> None:
    """BadInput when a finished cell was made under another fingerprint than this run would use for it."""
    for chunk in plan:
        expected = execution_fingerprint(model.device, model.dtype, len(chunk) if mode == "stacked" else 1, mode,
                                         speed_state(model))
        for i in chunk:
            if i in done:
                differ = differing_conditions(done[i].execution.get("fingerprint"), expected)
                if differ:
                    raise BadInput(f"{done[i].path}: finished under other conditions ({'; '.join(differ)}); "
                                   "mixing them into one grid changes float rounding between cells: pass "
                                   "--allow-mixed to keep them, or use another --out")


def render_cells(model, cells: Sequence[Cell], *, out_dir: str | Path | None = None, batch_size: int = 8,
                 mode: str = "stacked", allow_mixed: bool = False, shard: tuple[int, int] = (0, 1),
                 progress: bool = True, on_written: OnWritten | None = None,
                 callback: StepCallback | None = None) -> list[CellResult | None]:
    """Render `cells` call batch by call batch; with `out_dir`, skip finished files and save each batch at once.

    `shard=(index, count)`: render only call batches k with k % count == index (the other places of the
    returned list stay None for cells another process renders). `callback` is called after every sampler
    step (as in `render`); an exception it raises stops the run there, keeping every batch already saved.
    """
    from tqdm.auto import tqdm

    from .memory import check_fits
    from .rendering import check_mode, plan_chunks, render_batch
    from .truncation import check_prompt_length

    check_mode(mode)
    folder = Path(out_dir) if out_dir is not None else None
    recipes = [c.recipe for c in cells]
    plan = plan_chunks(recipes, batch_size)   # from the whole experiment: never from what a crash left over
    results: dict[int, CellResult] = {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if shard[1] == 1:   # sharded: the main process cleaned before any shard started writing
            clean_stale_temps(folder)
        for i, cell in enumerate(cells):
            done = finished_cell(folder / cell.filename, cell)
            if done is not None:
                results[i] = done
        if results:
            log.info("%d of %d cells already finished in %s", len(results), len(cells), folder)
            if not allow_mixed:
                check_not_mixed(model, results, plan, mode)
    index, count = shard
    mine = [chunk for k, chunk in enumerate(plan) if k % count == index and any(i not in results for i in chunk)]
    if mine:
        check_fits(model, recipes, batch_size, mode)
    cut: dict[tuple, dict] = {}   # prompts longer than the text encoder reads: one warning each, before rendering
    for i in (i for chunk in mine for i in chunk if i not in results):
        key = (recipes[i].prompt, recipes[i].negative_prompt)
        if key not in cut:
            cut[key] = check_prompt_length(model, recipes[i]) or {}
    process = {"index": index, "count": count}
    total = sum(1 for chunk in mine for i in chunk if i not in results)
    with tqdm(total=total, desc="cells", unit="cell", disable=not progress or not total) as bar:
        for chunk in mine:
            rendered = render_batch(model, [recipes[i] for i in chunk], callback, progress=progress, mode=mode,
                                    desc=f"cells {', '.join(str(i + 1) for i in chunk)} of {len(cells)}")
            for i, res in zip(chunk, rendered):
                if i in results:
                    continue  # a finished cell re-rendered only to rebuild the call: thrown away
                execution = {**res.execution, "process": process, **cut[(res.recipe.prompt, res.recipe.negative_prompt)]}
                path = None
                if folder is not None:  # saved right away: a kill loses at most the batch being rendered
                    path = save_png(res.image, folder / cells[i].filename, res.recipe, res.loss_history, execution)
                    if on_written:
                        on_written(path)
                results[i] = CellResult(cells[i], res.image, res.loss_history, path, execution=execution)
                bar.update(1)
    return [results.get(i) for i in range(len(cells))]


def render_plain(model, exp: Experiment, *, out: str | Path | None = None, **options) -> list[CellResult]:
    """The plain row: every style with its seed, no loss (saved under out/NAME when `out` is given)."""
    return render_cells(model, plan_cells(model, exp, ["plain"]), out_dir=_folder(exp, out), **options)


def render_guided(model, exp: Experiment, *, out: str | Path | None = None, **options) -> list[CellResult]:
    """The guided row: the same styles and seeds, steered by the experiment's loss."""
    return render_cells(model, plan_cells(model, exp, ["guided"]), out_dir=_folder(exp, out), **options)


def _folder(exp: Experiment, out: str | Path | None) -> Path | None:
    return None if out is None else Path(out) / exp.name


def collect_finished(cells: Sequence[Cell], folder: Path) -> list[CellResult]:
    """Every cell read back from disk (after all shards finished); RuntimeFailure naming a missing one."""
    results = []
    for cell in cells:
        done = finished_cell(folder / cell.filename, cell)
        if done is None:
            raise RuntimeFailure(f"{folder / cell.filename}: missing after every process finished; run again")
        results.append(done)
    return results


def run_experiment(exp: Experiment, *, out: str | Path = "outputs", model=None, device: str = "auto",
                   dtype: str = "auto", batch_size: int = 8, mode: str = "stacked", allow_mixed: bool = False,
                   compile: bool = False, channels_last: bool = False, progress: bool = True,
                   export_format: str = "jpeg", on_written: OnWritten | None = None,
                   callback: StepCallback | None = None) -> RunReport:
    """Load (unless `model` is given), render every cell with resume, then grid, export and manifest.

    Under `accelerate launch` each process renders its share of the call batches on its own device;
    the main process writes grid, export and manifest after `wait_for_everyone`.
    """
    from accelerate import PartialState

    from .models import load_model

    import torch

    # cpu=True lets a CPU-only launch (torchrun's WORLD_SIZE, or MPI) form a gloo process group
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    written: list[Path] = []

    def emit(path: Path) -> None:
        written.append(path)
        if on_written:
            on_written(path)

    if model is None:
        if state.num_processes > 1 and device == "auto":
            device = state.device.type   # each process on its own GPU (accelerate sets the current device)
        model = load_model(exp.model, device=device, dtype=dtype, refiner=exp.refiner)
    elif exp.refiner and (model.refiner is None or model.refiner.source != exp.refiner):
        from .refiner import load_refiner

        load_refiner(model, exp.refiner)
    optimize(model, channels_last=channels_last, compile=compile)
    load_styles(model, exp, progress=progress and state.is_local_main_process)
    folder = Path(out) / exp.name
    cells = plan_cells(model, exp)
    if state.num_processes > 1:
        if state.is_main_process:   # debris of killed writers, removed before any process writes
            folder.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(folder)
        state.wait_for_everyone()
    results = render_cells(model, cells, out_dir=folder, batch_size=batch_size, mode=mode, allow_mixed=allow_mixed,
                           shard=(state.process_index, state.num_processes), progress=progress, on_written=emit,
                           callback=callback)
    if state.num_processes > 1:
        state.wait_for_everyone()
        if not state.is_main_process:
            return RunReport(folder, [r for r in results if r is not None], None, None, [], written)
        results = collect_finished(cells, folder)
    grid, export, manifest = export_run(exp, results, out, export_format=export_format, on_written=emit)
    return RunReport(folder, results, grid, manifest, export, written)
