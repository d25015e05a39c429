"""Build notebooks/app.ipynb (run: python notebooks/build_app.py): the Gradio app inline in Colab or Jupyter.

Stored without outputs so it stays reviewable in diffs; tests execute it with papermill on the tiny model.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO_URL = "https://github.com/YOUR-ORG/sd-styles"  # placeholder: the repository this notebook is published from
HERE = Path(__file__).resolve().parent

CELLS: list[tuple[str, str, list[str]]] = [  # (kind, source, tags)
    ("md", f"""# sd-styles in the browser

The Gradio app inside this notebook: **Generate** (styles from the catalog, seeds, loss guidance, Stop,
live preview), **Compare styles** (the fixed-seed five-style grid of `sd-styles run`, plain and guided, with
its blog export) and **PNG info** (read an image's recipe, send it to Generate, re-render it).

[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({REPO_URL.replace("https://github.com", "https://colab.research.google.com/github")}/blob/main/notebooks/app.ipynb)
In Colab pick a GPU runtime (Runtime → Change runtime type → T4). The app is shown inline and is not
public: `SHARE = False` (Gradio would otherwise open a public gradio.live link in Colab).""", []),
    ("code", f"""# Install: only in Colab. Elsewhere: pip install -e ".[app]" in a checkout.
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    %pip install -q "sd-styles[app] @ git+{REPO_URL}.git\"""", []),
    ("md", """## Parameters
`MODEL` is a hub id or a local diffusers folder (`"tiny"`: a random model for offline tests). `SHARE = True`
opens a public link anyone can use: only for a demo you watch.""", []),
    ("code", """MODEL = "CompVis/stable-diffusion-v1-4"
OUT_DIR = "outputs"        # each browser session writes to OUT_DIR/sessions/<id>/
PORT = 7860
SHARE = False              # opt-in public link
CLOSE_AT_END = False       # tests stop the server in the last cell""", ["parameters"]),
    ("md", "## Start the app", []),
    ("code", """from sd_styles.app import AppConfig, build_app, launch
from sd_styles.models import load_model

model = load_model(MODEL)                       # once; device and dtype chosen automatically
config = AppConfig(out=OUT_DIR, port=PORT, share=SHARE)
demo = build_app(model, out=config.out)
launch(demo, config, inline=True, prevent_thread_lock=True)   # shown below this cell; the kernel stays free""",
     []),
    ("md", """## Call it from Python
The endpoint `/generate` returns the PNG (with its recipe inside); parameters left out keep the form's
defaults.""", []),
    ("code", """from gradio_client import Client
from PIL import Image

client = Client(f"http://127.0.0.1:{PORT}", verbose=False)
png = client.predict(prompt="a lighthouse at dusk", seed=7, steps=4 if MODEL == "tiny" else 30,
                     api_name="/generate")
print(png)
print(Image.open(png).info["parameters"])""", []),
    ("code", """if CLOSE_AT_END:
    demo.close()""", []),
]


def build() -> nbformat.NotebookNode:
    """The notebook, outputs empty, with Colab's GPU hint in the metadata."""
    cells = []
    for i, (kind, source, tags) in enumerate(CELLS):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding gives the same file
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)
    nb = new_notebook(cells=cells)
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4"},
    })
    return nb


def main() -> Path:
    path = HERE / "app.ipynb"
    nb = build()
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    print(main())
