"""notebooks/train_concept.ipynb: stored clean, in sync with its builder, and runs under papermill offline."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
from helpers import build_tiny_scorers
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "train_concept.ipynb"


@pytest.mark.slow
def test_notebook_trains_and_scores_on_the_tiny_model(tiny_dir, tmp_path):
    papermill = pytest.importorskip("papermill")
    clip, dino = build_tiny_scorers(tmp_path)
    pics = tmp_path / "pics"
    pics.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(pics / f"{i}.png")
    out = tmp_path / "out" / "nb.safetensors"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"), kernel_name="python3", cwd=str(tmp_path),
        progress_bar=False, log_output=False,
        parameters=dict(MODEL=str(tiny_dir), IMAGES=str(pics), TOKEN="<nb-toy>", INIT_WORD="o", STEPS=4, SIZE=16,
                        LR=0.05, GRAD_ACCUM=1, PREVIEW_EVERY=2, PREVIEW_STEPS=2, SAVE_EVERY=2, OUT=str(out),
                        GEN_STEPS=2, GEN_SEEDS=[1, 2], CLIP=str(clip), DINO=str(dino)))
    assert out.is_file()
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # loss plot, 2 previews, 2 comparison rows
    scores = executed.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "clip_i" in scores and "dino" in scores
