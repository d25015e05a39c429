"""Grids (layout, readable TrueType labels) and the blog export (web copies, EXIF parameters, post.md)."""

from __future__ import annotations

from PIL import Image, ImageFont
from sd_parsers import ParserManager

from sd_styles.experiment import Cell, Experiment, Style
from sd_styles.export import export_blog
from sd_styles.grid import label_font, make_grid, results_grid, wrap_text
from sd_styles.recipe import Guidance, LossTerm, Recipe
from sd_styles.runner import CellResult

GUIDANCE = Guidance((LossTerm("canny", 200.0),), every=5)
TOKENS = ["<gta5-artwork>", "<hitokomoru-style-nao>", "<line-art>"]


def fake_results(size: int = 64, kinds=("plain", "guided")) -> list[CellResult]:
    """Cells of a 3-style experiment with flat-colour images (no model needed)."""
    out = []
    for kind in kinds:
        for col, token in enumerate(TOKENS):
            recipe = Recipe(prompt=f"a cat in the style of {token}", seed=100 + col, width=size, height=size,
                            steps=2, model="tiny", guidance=GUIDANCE if kind == "guided" else None)
            colour = (60 * col, 200 if kind == "guided" else 40, 90)
            history = [3.0, 1.5 + col] if kind == "guided" else []
            out.append(CellResult(Cell(col, kind, token, f"sd-concepts-library/{token[1:-1]}", recipe),
                                  Image.new("RGB", (size, size), colour), history))
    return out


def test_label_font_is_truetype_and_scales():
    small, big = label_font(12), label_font(48)
    assert isinstance(big, ImageFont.FreeTypeFont) and "DejaVu" in big.getname()[0]
    assert big.getbbox("seed 101")[2] > 3 * small.getbbox("seed 101")[2]


def test_wrap_text_breaks_long_tokens_at_dashes():
    font = label_font(28, bold=True)  # the header font of 256 px cells
    lines = wrap_text("<hitokomoru-style-nao>\nseed 505", font, 240)
    assert len(lines) >= 3 and lines[-1] == "seed 505"
    assert all(font.getlength(line) <= 240 for line in lines)
    assert "".join(lines[:-1]) == "<hitokomoru-style-nao>"
    assert lines[0].endswith("-")


def test_make_grid_enlarges_small_cells_and_places_them():
    cells = [[Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")],
             [Image.new("RGB", (64, 64), "green"), None]]
    grid = make_grid(cells, column_labels=["<a>\nseed 1", "<b>\nseed 2"], row_labels=["plain", "guided"])
    assert grid.width >= 2 * 256 and grid.height > 2 * 256  # 64 px cells shown at 256 px, plus labels
    centre_colours = {grid.getpixel((x, y)) for x in range(grid.width // 8, grid.width, grid.width // 4)
                      for y in range(0, grid.height, 7)}
    assert {(255, 0, 0), (0, 0, 255), (0, 128, 0)} <= centre_colours


def test_results_grid_has_styles_as_columns_and_plain_on_top():
    results = fake_results()
    grid = results_grid(list(reversed(results)))  # order given does not matter
    assert grid.width > 3 * 256
    # the first image row (below header and band) is the plain row: dark green channel 40
    column_x = grid.width // 6
    greens = [grid.getpixel((column_x, y))[1] for y in range(grid.height)]
    assert greens.index(40) < greens.index(200)


def test_grid_text_grows_with_the_cells():
    small = results_grid(fake_results(64))
    large = results_grid(fake_results(512))
    header_small = _header_height(small)
    header_large = _header_height(large)
    assert header_large > 1.5 * header_small


def _header_height(grid: Image.Image) -> int:
    """Rows from the top until the first row of the grey row band."""
    for y in range(grid.height):
        if grid.getpixel((2, y)) == (236, 236, 236):
            return y
    return grid.height


def test_export_writes_web_copies_with_parameters_and_a_post(tmp_path):
    results = fake_results()
    for r in results:
        r.path = tmp_path / r.cell.filename
    exp = Experiment(name="demo", prompt="a cat in the style of {style}",
                     styles=tuple(Style(f"sd-concepts-library/{t[1:-1]}", 100 + i) for i, t in enumerate(TOKENS)),
                     guidance=GUIDANCE)
    grid = results_grid(results)
    paths = export_blog(exp, results, grid, tmp_path / "blog", fmt="jpeg", grid_max_side=600)
    assert [p.suffix for p in paths] == [".jpg"] * 7 + [".md"]
    with Image.open(paths[0]) as im:
        assert max(im.size) == 600 and im.format == "JPEG"
    info = ParserManager().parse(paths[-2])  # the last guided cell
    assert str(info.prompts[0]) == results[-1].cell.recipe.prompt
    assert int(info.samplers[0].parameters["seed"]) == 102
    post = paths[-1].read_text(encoding="utf-8")
    assert "![" in post and "(grid.jpg)" in post
    for p in paths[1:-1]:
        assert f"({p.name})" in post
    assert post.count("&lt;hitokomoru-style-nao&gt; · seed 101 ·") == 2  # one caption per image, escaped token
    assert "guided by canny:200 (final loss 2.5)" in post
    assert not list((tmp_path / "blog").glob(".tmp-*"))


def test_export_webp(tmp_path):
    results = fake_results(kinds=("plain",))
    exp = Experiment(name="demo", prompt="{style}", styles=(Style("x", 1),))
    paths = export_blog(exp, results, results_grid(results), tmp_path, fmt="webp")
    with Image.open(paths[1]) as im:
        assert im.format == "WEBP"
