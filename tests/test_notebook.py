"""notebooks/five_styles.ipynb: stored clean and in sync with its builder, and it runs under papermill offline."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "five_styles.ipynb"
KERNEL = "sd-styles"  # what .ci/run installs into the environment (--sys-prefix); python3 where it is absent
REQUIRED = {"MODEL", "CONCEPTS", "SEEDS", "PROMPT", "STEPS", "WIDTH", "HEIGHT", "OUT_DIR", "LOSS", "LOSS_SCALE"}


def kernel_name() -> str:
    """The project's kernel when installed (as CI does), else this interpreter's default `python3`."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def test_ci_installs_the_kernel_into_the_environment_under_the_project_name():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    [line] = [ln for ln in script.splitlines() if "ipykernel install" in ln]
    assert "--sys-prefix" in line and f"--name {KERNEL}" in line and "--user" not in line


def test_notebook_install_cell_is_real_and_intro_promises_no_rerun_of_notebook_losses():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "YOUR-ORG" not in text and "github.com/" not in text  # no invented URL
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert "pip install -q -e {CHECKOUT}" in install.source
    intro = nb.cells[0].source
    assert "cannot be rerun from the file" in intro and "In Colab" in intro


def test_parameters_cell_defines_what_papermill_sets():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    names = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert REQUIRED <= names
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert "IN_COLAB" in install.source and "%pip install" in install.source


@pytest.mark.slow
def test_notebook_runs_offline_on_the_tiny_model(tiny_dir, tmp_path):
    papermill = pytest.importorskip("papermill")
    concepts = []
    for i in range(2):  # two styles keep it quick; the notebook takes any number
        path = tmp_path / f"nb-style-{i}.pt"
        torch.save({f"<nb-{i}>": torch.randn(32, generator=torch.Generator().manual_seed(i))}, path)
        concepts.append(str(path))
    out = tmp_path / "out"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"), kernel_name=kernel_name(), cwd=str(tmp_path),
        progress_bar=False, log_output=False,
        parameters=dict(MODEL=str(tiny_dir), CONCEPTS=concepts, SEEDS=[3, 4], PROMPT="a boat by {style}", STEPS=2,
                        WIDTH=64, HEIGHT=64, OUT_DIR=str(out), LOSS="custom", LOSS_SCALE=50.0, LOSS_EVERY=1,
                        NEW_SEEDS=[5, 6]))
    first, second = out / "five-styles-notebook", out / "five-styles-notebook-new-seeds"
    for folder, seeds in ((first, {3, 4}), (second, {5, 6})):
        cells = [p for p in folder.glob("*.png") if p.name != "grid.png"]
        assert len(cells) == 4, folder
        assert {int(p.name.split("-s")[-1].split("-")[0]) for p in cells} == seeds
        assert (folder / "grid.png").is_file() and (folder / "manifest.json").is_file()
        assert (folder / "blog" / "post.md").is_file()
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # plain grid, guided grid, comparison, loss plot, new-seeds comparison
