"""notebooks/app.ipynb: stored clean and in sync with its builder; it starts the app inline and serves /generate."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "app.ipynb"


def test_notebook_is_private_and_inline():   # stored clean and equal to its builder: test_notebooks_stored.py
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [params] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert "SHARE = False" in params.source
    assert any("inline=True" in c.source and "launch(" in c.source for c in nb.cells)


@pytest.mark.slow
def test_notebook_starts_the_app_and_generates(tmp_path):
    papermill = pytest.importorskip("papermill")
    pytest.importorskip("gradio")
    from app_helpers import free_port

    out = tmp_path / "out"
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(executed), kernel_name="python3", cwd=str(tmp_path),
                               progress_bar=False, log_output=False,
                               parameters=dict(MODEL="tiny", OUT_DIR=str(out), PORT=free_port(), CLOSE_AT_END=True))
    text = json.dumps(nbformat.read(executed, as_version=4).cells)
    assert "Seed: 7" in text and "a lighthouse at dusk" in text
    [png] = out.glob("sessions/*/a-lighthouse-at-dusk-s7-*.png")
    assert png.stat().st_size > 0
