"""Build notebooks/five_styles.ipynb from the cells below (run: python notebooks/build_five_styles.py).

The notebook is generated so it stays reviewable in diffs and is always stored without outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # nbcells.py, the builders' shared part, sits beside this script
from nbcells import INSTALL_NOTE, build_notebook, install_cell, write_notebook  # noqa: E402


CELLS: list[tuple[str, str, list[str]]] = [  # (kind, source, tags)
    ("md", f"""# Five styles, plain and loss-guided

Render one prompt in five textual-inversion styles from the
[sd-concepts-library](https://huggingface.co/sd-concepts-library), each with its own seed; render it again
while a creative loss steers sampling; compare, export for a blog, and try other seeds.

{INSTALL_NOTE}

Images guided by a built-in loss carry their whole recipe: `sd-styles rerun IMAGE` re-creates them from the
file alone. Cells guided by the loss *defined in this notebook* record only its name (`warm_vignette`), not its
code, so they cannot be rerun from the file; re-run this notebook for them.""", []),
    ("code", install_cell("five_styles.ipynb", ""), []),
    ("md", """## Parameters
`MODEL` is a hub id or a local diffusers folder of an SD 1.x model (the concepts are 768-wide SD 1.x
embeddings); `"tiny"` is the built-in random 32-wide model, offline and in seconds, with the five built-in
random demo styles `CONCEPTS = ["demo:random-1", ..., "demo:random-5"]` (noise, not art). `{style}` in the
prompt becomes each concept's trigger token. `LOSS` is `"custom"` (the function
defined below) or a built-in: `blue`, `warm`, `sepia`, `saturation`, `contrast`, `canny`, `symmetry`,
`color=#ff8800`, `clip=a watercolor painting`.""", []),
    ("code", """MODEL = "CompVis/stable-diffusion-v1-4"
CONCEPTS = [
    "sd-concepts-library/gta5-artwork",
    "sd-concepts-library/moeb-style",
    "sd-concepts-library/line-art",
    "sd-concepts-library/dr-strange",
    "sd-concepts-library/hitokomoru-style-nao",
]
SEEDS = [101, 202, 303, 404, 505]          # one per concept
PROMPT = "a mouse wearing a top hat in the style of {style}"
STEPS = 50
WIDTH = 512
HEIGHT = 512
GUIDANCE_SCALE = 7.5                       # classifier-free guidance
OUT_DIR = "outputs"                        # images go to OUT_DIR/NAME/
NAME = "five-styles-notebook"
LOSS = "custom"                            # "custom" or a built-in loss name
LOSS_SCALE = 200.0
LOSS_EVERY = 5                             # guide every 5th step (the loss costs ~3 UNet steps through the VAE)
DECODER = "vae"                            # vae | tiny | linear: the image decoder the loss sees
NEW_SEEDS = [1, 2, 3, 4, 5]                # for the last section""", ["parameters"]),
    ("md", "## Load the model and the styles", []),
    ("code", """from dataclasses import replace

import matplotlib.pyplot as plt
from IPython.display import display

from sd_styles.experiment import experiment, load_styles, pick_styles, with_seeds
from sd_styles.grid import compare, results_grid
from sd_styles.losses import parse_loss_spec
from sd_styles.models import load_model
from sd_styles.plots import plot_loss_history
from sd_styles.recipe import Guidance, LossTerm
from sd_styles.runner import export_run, render_guided, render_plain

exp = experiment(PROMPT, CONCEPTS, SEEDS, name=NAME, model=MODEL, steps=STEPS, width=WIDTH, height=HEIGHT,
                 guidance_scale=GUIDANCE_SCALE)
model = load_model(MODEL)                  # device and dtype chosen automatically
tokens = load_styles(model, exp)           # downloads (cached) and loads each concept
tokens""", []),
    ("md", "Optional: untick styles to leave them out, then run the next cell (a non-interactive run keeps all).", []),
    ("code", """try:
    import ipywidgets as widgets

    picker = widgets.SelectMultiple(options=[(t, i) for i, t in enumerate(tokens)], value=tuple(range(len(tokens))),
                                    rows=len(tokens), description="styles")
    display(picker)
except ImportError:
    picker = None""", []),
    ("md", "## Plain: every style with its own seed", []),
    ("code", """exp = pick_styles(exp, picker.value if picker is not None else range(len(exp.styles)))
plain = render_plain(model, exp, out=OUT_DIR)
display(results_grid(plain))""", []),
    ("md", """## A loss of our own
A loss is a plain function `loss(images) -> scalar` on `(N, 3, H, W)` images in `[0, 1]`; sampling moves
the latents down its gradient. This one asks for warm light in the centre fading to darker corners.
A function defined here is not importable later: to re-run its images from the files, move it into a
module and name it `"module:function"`.""", []),
    ("code", """import torch


def warm_vignette(images: torch.Tensor) -> torch.Tensor:
    \"\"\"Warm centre, darker corners: brightness follows a radial falloff, red stays above blue.\"\"\"
    _, _, h, w = images.shape
    y, x = torch.meshgrid(torch.linspace(-1, 1, h, device=images.device),
                          torch.linspace(-1, 1, w, device=images.device), indexing="ij")
    falloff = 0.75 - 0.45 * (x**2 + y**2).clamp(max=1.0)       # 0.75 in the centre, 0.3 in the corners
    brightness = images.mean(dim=1)
    warmth = images[:, 0] - images[:, 2]
    return (brightness - falloff).abs().mean() + (warmth - 0.2).abs().mean()


term = LossTerm("warm_vignette", LOSS_SCALE, fn=warm_vignette) if LOSS == "custom" else \\
    parse_loss_spec(f"{LOSS}:{LOSS_SCALE}")
guided_exp = replace(exp, guidance=Guidance((term,), every=LOSS_EVERY, decoder=DECODER))
term""", []),
    ("md", "## Guided: the same styles and seeds, steered by the loss", []),
    ("code", """guided = render_guided(model, guided_exp, out=OUT_DIR)
display(results_grid(guided))""", []),
    ("md", "## Side by side", []),
    ("code", "display(compare(plain, guided))", []),
    ("md", "## The loss while sampling", []),
    ("code", """plot_loss_history(guided, labels=[f"{r.cell.token} (seed {r.recipe.seed})" for r in guided])
plt.show()""", []),
    ("md", "## Export: cells with their recipes, the grid, a manifest, and a blog folder (web images + post.md)", []),
    ("code", """grid_path, blog_files, manifest = export_run(guided_exp, plain + guided, OUT_DIR)
print(grid_path, manifest, *blog_files, sep="\\n")""", []),
    ("md", "## Re-run with new seeds", []),
    ("code", """again = replace(with_seeds(guided_exp, NEW_SEEDS[:len(guided_exp.styles)]), name=f"{NAME}-new-seeds")
plain2 = render_plain(model, again, out=OUT_DIR)
guided2 = render_guided(model, again, out=OUT_DIR)
export_run(again, plain2 + guided2, OUT_DIR)
display(compare(plain2, guided2))""", []),
]


def build():
    """The notebook, outputs empty."""
    return build_notebook(CELLS)


def main() -> Path:
    return write_notebook(CELLS, HERE / "five_styles.ipynb")


if __name__ == "__main__":
    print(main())
