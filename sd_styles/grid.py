"""Labelled comparison grids: styles as columns, plain / guided as rows, text big enough for a phone.

Text is drawn with DejaVu Sans, the TrueType font matplotlib ships, so it scales with the cells
(PIL's bitmap default font is ~11 px whatever the image size). Small cells (the tiny model's 64 px)
are enlarged with nearest-neighbour so labels stay legible next to them.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from .experiment import CellResult

MIN_CELL = 256          # cells are enlarged to at least this many pixels per side
TEXT = (20, 20, 20)
BACKGROUND = (255, 255, 255)
BAND = (236, 236, 236)  # row label bands
EMPTY = (200, 200, 200)  # a missing cell


def label_font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu Sans at `size` px (matplotlib's bundled font), PIL's scalable default as a fallback."""
    try:
        from matplotlib import font_manager

        props = font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
        return ImageFont.truetype(font_manager.findfont(props, fallback_to_default=True), size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default(size)


def _split_long(word: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Break a word wider than `width` after '-', '_' or '/' (tokens like <hitokomoru-style-nao>), else anywhere."""
    lines, current = [], ""
    for piece in re.findall(r"[^-_/]+[-_/]*|[-_/]+", word):
        if draw.textlength(current + piece, font=font) <= width:
            current += piece
            continue
        if current:
            lines.append(current)
        while len(piece) > 1 and draw.textlength(piece, font=font) > width:
            n = 1  # the longest prefix that fits, at least one character
            while n < len(piece) and draw.textlength(piece[:n + 1], font=font) <= width:
                n += 1
            lines.append(piece[:n])
            piece = piece[n:]
        current = piece
    return lines + ([current] if current else [])


def wrap_text(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; explicit newlines are kept."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = f"{current} {word}" if current else word
            if draw.textlength(candidate, font=font) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            pieces = _split_long(word, font, width, draw)
            lines.extend(pieces[:-1])
            current = pieces[-1] if pieces else ""
        lines.append(current)
    return lines


def _line_height(font) -> int:
    return int(math.ceil(getattr(font, "size", 12) * 1.25))


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], font, box: tuple[int, int, int]) -> None:
    """Centre `lines` horizontally in the box (left, top, width)."""
    left, top, width = box
    for k, line in enumerate(lines):
        x = left + (width - draw.textlength(line, font=font)) / 2
        draw.text((x, top + k * _line_height(font)), line, font=font, fill=TEXT)


def make_grid(rows: Sequence[Sequence[Optional[Image.Image]]], *, column_labels: Sequence[str],
              row_labels: Sequence[str], captions: Sequence[Sequence[str]] | None = None,
              min_cell: int = MIN_CELL) -> Image.Image:
    """A labelled grid: a header per column, a band above each row, an optional caption under each cell."""
    first = next((im for row in rows for im in row if im is not None), None)
    if first is None:
        raise ValueError("make_grid needs at least one image")
    k = max(1, math.ceil(min_cell / min(first.size)))
    cw, ch = first.width * k, first.height * k
    ncols = max(len(r) for r in rows)
    pad = max(4, cw // 40)
    head_font, band_font, cap_font = label_font(max(14, cw // 9), bold=True), label_font(max(14, cw // 10)), \
        label_font(max(12, cw // 13))
    head_lines = [wrap_text(label, head_font, cw - 2 * pad) for label in column_labels]
    head_h = max(len(ls) for ls in head_lines) * _line_height(head_font) + 2 * pad
    width = ncols * cw + (ncols + 1) * pad
    band_lines = [wrap_text(label, band_font, width - 2 * pad) for label in row_labels]
    caps = captions or [[""] * len(r) for r in rows]
    cap_lines = [[wrap_text(c, cap_font, cw) if c else [] for c in row] for row in caps]
    cap_h = [max((len(ls) for ls in row), default=0) * _line_height(cap_font) for row in cap_lines]
    band_h = [len(ls) * _line_height(band_font) + 2 * pad for ls in band_lines]
    height = head_h + sum(band_h[r] + ch + cap_h[r] + pad for r in range(len(rows)))
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for c, lines in enumerate(head_lines):
        _draw_lines(draw, lines, head_font, (pad + c * (cw + pad), pad, cw))
    y = head_h
    for r, row in enumerate(rows):
        draw.rectangle((0, y, width, y + band_h[r] - 1), fill=BAND)
        _draw_lines(draw, band_lines[r], band_font, (pad, y + pad, width - 2 * pad))
        y += band_h[r]
        for c in range(ncols):
            x = pad + c * (cw + pad)
            im = row[c] if c < len(row) else None
            if im is None:
                draw.rectangle((x, y, x + cw - 1, y + ch - 1), fill=EMPTY)
            else:
                grid.paste(im.convert("RGB").resize((cw, ch), Image.NEAREST if k > 1 else Image.LANCZOS), (x, y))
            if c < len(cap_lines[r]) and cap_lines[r][c]:
                _draw_lines(draw, cap_lines[r][c], cap_font, (x, y + ch, cw))
        y += ch + cap_h[r] + pad
    return grid


def row_label(kind: str, guidance) -> str:
    """'plain' or 'guided · loss canny:200 · every 5'."""
    if kind != "guided" or guidance is None:
        return kind
    every = f" · every {guidance.every}" if guidance.every != 1 else ""
    return f"guided · loss {guidance.label()}{every}"


def results_grid(results: Sequence["CellResult"], min_cell: int = MIN_CELL) -> Image.Image:
    """Experiment cells as a grid: styles as columns (token, seed), plain / guided rows (with the loss)."""
    columns = sorted({r.cell.column for r in results})
    row_keys: list[tuple] = []
    for r in results:
        key = (r.cell.kind, r.cell.recipe.guidance)
        if key not in row_keys:
            row_keys.append(key)
    row_keys.sort(key=lambda key: key[0] != "plain")  # plain on top, guided rows in the order given
    cell_at = {(r.cell.column, r.cell.kind, r.cell.recipe.guidance): r for r in results}
    labels = []
    for c in columns:
        any_cell = next(r for r in results if r.cell.column == c)
        labels.append(f"{any_cell.cell.token}\nseed {any_cell.cell.recipe.seed}")
    rows, captions = [], []
    for kind, guidance in row_keys:
        cells = [cell_at.get((c, kind, guidance)) for c in columns]
        rows.append([r.image if r else None for r in cells])
        captions.append([f"final loss {r.final_loss:.3g}" if r and r.final_loss is not None else "" for r in cells])
    return make_grid(rows, column_labels=labels, row_labels=[row_label(k, g) for k, g in row_keys],
                     captions=captions, min_cell=min_cell)


def compare(plain: Sequence["CellResult"], guided: Sequence["CellResult"]) -> Image.Image:
    """Plain above guided, style by style: the side-by-side comparison."""
    return results_grid([*plain, *guided])
