"""Build notebooks/app.ipynb (run: python notebooks/build_app.py): the Gradio app inline in Colab or Jupyter.

Stored without outputs so it stays reviewable in diffs; tests execute it with papermill on the tiny model.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # nbcells.py, the builders' shared part, sits beside this script
from nbcells import INSTALL_NOTE, build_notebook, install_cell, write_notebook  # noqa: E402


CELLS: list[tuple[str, str, list[str]]] = [  # (kind, source, tags)
    ("md", f"""# sd-styles in the browser

The Gradio app inside this notebook: **Generate** (styles from the catalog, seeds, loss guidance, Stop,
live preview), **Compare styles** (the fixed-seed five-style grid of `sd-styles run`, plain and guided, with
its blog export) and **PNG info** (read an image's recipe, send it to Generate, re-render it).

{INSTALL_NOTE}
In Colab pick a GPU runtime (Runtime → Change runtime type → T4). The app is shown inline and is not
public: `SHARE = False` (Gradio would otherwise open a public gradio.live link in Colab).""", []),
    ("code", install_cell("app.ipynb", "[app]"), []),
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


def build():
    """The notebook, outputs empty."""
    return build_notebook(CELLS)


def main() -> Path:
    return write_notebook(CELLS, HERE / "app.ipynb")


if __name__ == "__main__":
    print(main())
