"""notebooks/sdxl_refiner.ipynb: stored clean and in sync with its builder, and it runs under papermill offline."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from helpers import pixel_diff
from PIL import Image

from sd_styles.metadata import read_recipe

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sdxl_refiner.ipynb"
REQUIRED = {"MODEL", "REFINER", "SWITCH", "CONCEPTS", "SEEDS", "PROMPT", "STEPS", "WIDTH", "HEIGHT", "OUT_DIR"}


def test_parameters_cell_defines_what_papermill_sets():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    names = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert REQUIRED <= names


@pytest.mark.slow
def test_notebook_runs_offline_on_the_tiny_sdxl_models(tiny_sdxl_dir, tiny_sdxl_refiner_dir, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "out"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"), kernel_name="python3", cwd=str(tmp_path),
        progress_bar=False, log_output=False,
        parameters=dict(MODEL=str(tiny_sdxl_dir), REFINER=str(tiny_sdxl_refiner_dir), SWITCH=0.5, CONCEPTS=[],
                        SEEDS=[1, 2], PROMPT="a boat", STEPS=3, WIDTH=64, HEIGHT=48, OUT_DIR=str(out),
                        MEMORY_SAVERS=False))
    folder = out / "sdxl-refiner-notebook"
    base = sorted(folder.glob("base-*.png"))
    refined = sorted(folder.glob("refined-*.png"))
    assert len(base) == 2 and len(refined) == 2 and (folder / "grid.png").is_file()
    for b, r in zip(base, refined):
        rb, rr = read_recipe(b), read_recipe(r)
        assert rb.refiner is None and rr.refiner == str(tiny_sdxl_refiner_dir) and rr.refiner_switch == 0.5
        assert rb.seed == rr.seed and Image.open(b).size == (64, 48)
        assert pixel_diff(Image.open(b), Image.open(r)) > 3, "the refiner must change the image"
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the labelled grid
