"""What every notebook builder shares: the install cell, and (kind, source, tags) cells -> a clean notebook.

The builders (build_*.py beside this file) keep only their own cells; tests compare each stored notebook
with its builder's `build()`, so a notebook is never edited by hand.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

Cells = list[tuple[str, str, list[str]]]   # (kind "md" | "code", source, tags)

INSTALL_NOTE = """**Install.** Run the first code cell. Inside a checkout of this repository (Jupyter, VS Code, papermill)
it installs the package from the checkout itself. **In Colab** there is no checkout: first clone the
repository you got this notebook from (`!git clone <its URL>`, then `%cd <folder>/notebooks`), pick a GPU
runtime (Runtime → Change runtime type → T4), then run the first cell."""


def install_cell(notebook: str, extra: str = "") -> str:
    """The first code cell: install sd-styles (with `extra`, e.g. "[app]") from the checkout it sits in."""
    return f"""# Install sd-styles from the checkout this notebook sits in (Colab: clone the repository first, see above).
import importlib.util
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules
CHECKOUT = next((p for p in (Path.cwd(), *Path.cwd().parents)
                 if (p / "pyproject.toml").is_file() and (p / "sd_styles").is_dir()), None)
if importlib.util.find_spec("sd_styles") is None or IN_COLAB:
    if CHECKOUT is None:
        raise RuntimeError("sd-styles is not installed and this notebook is not inside a checkout of it: "
                           "clone the repository, open notebooks/{notebook} from the clone, run this cell")
    %pip install -q -e {{CHECKOUT}}{extra}
    sys.path.insert(0, str(CHECKOUT))  # importable now, without restarting the kernel"""


def build_notebook(cells: Cells) -> nbformat.NotebookNode:
    """The notebook, outputs empty, stable cell ids, with Colab's GPU hint in the metadata."""
    nb_cells = []
    for i, (kind, source, tags) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding gives the same file
        if tags:
            cell.metadata["tags"] = tags
        nb_cells.append(cell)
    nb = new_notebook(cells=nb_cells)
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4"},
    })
    return nb


def write_notebook(cells: Cells, path: Path) -> Path:
    """Validate and write the notebook built from `cells`."""
    nb = build_notebook(cells)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path
