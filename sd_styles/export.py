"""Blog-ready export: web-sized JPEG/WebP copies of the grid and the cells, and a `post.md` with captions.

Web copies keep the A1111 `parameters` text in EXIF UserComment (as A1111 does for its JPEGs), so
PNG-info readers still show prompt and seed; the full recipe stays in the PNGs.
"""

from __future__ import annotations

from pathlib import Path
import json
from typing import TYPE_CHECKING, Callable, Sequence

from PIL import Image

from .atomic import atomic_save_image, atomic_write_text, clean_stale_temps
from .errors import BadInput
from .metadata import a1111_parameters, save_png

if TYPE_CHECKING:
    from .experiment import CellResult, Experiment

OnWritten = Callable[[Path], None]
MANIFEST_FORMAT = 1

FORMATS = {"jpeg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
EXIF_IFD = 0x8769        # the Exif sub-IFD
USER_COMMENT = 0x9286    # EXIF UserComment: "UNICODE\0" + UTF-16BE text, as A1111 writes it


def web_copy(image: Image.Image, path: Path, fmt: str = "jpeg", max_side: int = 1024, quality: int = 88,
             parameters: str | None = None) -> Path:
    """Save a downsized RGB copy (never enlarged) as JPEG or WebP, atomically."""
    if fmt not in FORMATS:
        raise BadInput(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    copy = image.convert("RGB")
    copy.thumbnail((max_side, max_side), Image.LANCZOS)
    options: dict = {"quality": quality}
    if parameters:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
        options["exif"] = exif.tobytes()
    return atomic_save_image(copy, path, FORMATS[fmt][0], **options)


def caption(r: "CellResult") -> str:
    """`<gta5-artwork> · seed 101 · guided by blue:100 (final loss 0.42)`."""
    recipe = r.cell.recipe
    text = f"{r.cell.token} · seed {recipe.seed} · "
    if r.cell.kind == "guided" and recipe.guidance is not None:
        text += f"guided by {recipe.guidance.label()}"
        if r.final_loss is not None:
            text += f" (final loss {r.final_loss:.3g})"
        return text
    return text + "plain"


def _md_text(text: str) -> str:
    # tokens look like HTML tags (<gta5-artwork>): escape so Markdown renderers show them
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")


def post_markdown(exp: "Experiment", results: Sequence["CellResult"], grid_name: str,
                  files: Sequence[str]) -> str:
    """The blog post: title, prompt and settings, the grid, then each image with its caption."""
    first = results[0].cell.recipe
    settings = (f"{first.steps} steps, CFG {first.cfg:g}, {first.scheduler}, {first.width}x{first.height}, "
                f"model {first.model}")
    kinds = " and ".join(dict.fromkeys(r.cell.kind for r in results))
    # the prompts as rendered, each style's token in place of {style} (the template itself means nothing to a reader)
    prompts = list(dict.fromkeys(r.cell.recipe.prompt for r in results))
    prompt_lines = ([f"Prompt: *{_md_text(prompts[0])}*"] if len(prompts) == 1 else
                    ["Prompts:", ""] + [f"- *{_md_text(p)}*" for p in prompts])
    lines = [f"# {_md_text(exp.name)}", "", *prompt_lines, "", f"Settings: {_md_text(settings)}",
             "", f"![{len({r.cell.column for r in results})} styles, {kinds}]({grid_name})", "",
             f"*Styles as columns, {kinds} as rows.*", ""]
    for r, name in zip(results, files):
        text = caption(r)
        lines += [f"![{_md_text(text.replace('<', '').replace('>', ''))}]({name})", "", f"*{_md_text(text)}*", ""]
    return "\n".join(lines)


def export_blog(exp: "Experiment", results: Sequence["CellResult"], grid: Path | Image.Image, folder: Path, *,
                fmt: str = "jpeg", max_side: int = 1024, grid_max_side: int = 2048,
                quality: int = 88) -> list[Path]:
    """Write web copies of the grid and every cell plus post.md into `folder`; returns the paths."""
    if fmt not in FORMATS:
        raise BadInput(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    ext = FORMATS[fmt][1]
    folder = Path(folder)
    if isinstance(grid, Image.Image):
        grid_image = grid
    else:
        with Image.open(grid) as im:
            grid_image = im.convert("RGB")
    paths = [web_copy(grid_image, folder / f"grid{ext}", fmt, grid_max_side, quality)]
    names = []
    for r in results:
        stem = Path(r.path).stem if r.path is not None else Path(r.cell.filename).stem
        path = web_copy(r.image, folder / f"{stem}{ext}", fmt, max_side, quality,
                        a1111_parameters(r.cell.recipe, r.loss_history))
        paths.append(path)
        names.append(path.name)
    paths.append(atomic_write_text(folder / "post.md", post_markdown(exp, results, paths[0].name, names)))
    return paths


def export_run(exp: "Experiment", results: Sequence["CellResult"], out: str | Path, *, export_format: str = "jpeg",
               on_written: OnWritten | None = None) -> tuple[Path, list[Path], Path]:
    """Save unsaved cells, then write grid.png, the blog export and manifest.json under out/NAME."""
    from .grid import results_grid

    folder = Path(out) / exp.name
    clean_stale_temps(folder / "blog")  # debris of an export killed mid-write
    emit = on_written or (lambda p: None)
    for r in results:
        if r.path is None:
            r.path = save_png(r.image, folder / r.cell.filename, r.cell.recipe, r.loss_history, r.execution)
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
    return atomic_save_image(image, path, "PNG", optimize=False)


def manifest_entry(r: "CellResult", folder: Path) -> dict:
    """One cell in manifest.json (with the process that rendered it and its call shape, when recorded)."""
    recipe, g = r.cell.recipe, r.cell.recipe.guidance
    return {"column": r.cell.column, "style": r.cell.concept, "token": r.cell.token, "kind": r.cell.kind,
            "seed": recipe.seed, "file": _relative(r.path, folder), "digest": recipe.digest(),
            "loss": g.label() if g is not None else None, "final_loss": r.final_loss,
            "process": r.execution.get("process", {}).get("index"), "call_shape": r.execution.get("call_shape")}


def write_manifest(path: Path, exp: "Experiment", results: Sequence["CellResult"], grid: Path,
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
