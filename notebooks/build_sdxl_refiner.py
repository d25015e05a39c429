"""Build notebooks/sdxl_refiner.ipynb from the cells below (run: python notebooks/build_sdxl_refiner.py).

The notebook is generated so it stays reviewable in diffs and is always stored without outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # nbcells.py, the builders' shared part, sits beside this script
from nbcells import INSTALL_NOTE, build_notebook, install_cell, write_notebook  # noqa: E402

NOTEBOOK = "sdxl_refiner.ipynb"

CELLS: list[tuple[str, str, list[str]]] = [  # (kind, source, tags)
    ("md", f"""# SDXL: the base alone vs base + refiner

SDXL is often run as an *ensemble of experts*: the base model denoises the first part of the schedule
(80% by default) and the refiner finishes the rest on the same latents. This notebook renders the same
prompt and seeds both ways and shows them side by side. Every image is saved with its recipe
(refiner and switch included): `sd-styles rerun IMAGE` re-creates it from the file alone.

{INSTALL_NOTE}
In Colab pick a GPU runtime (Runtime → Change runtime type → T4); `MEMORY_SAVERS` below keeps SDXL within
a 16 GB GPU.""", []),
    ("code", install_cell("sdxl_refiner.ipynb", ""), []),
    ("md", """## Parameters
`MODEL` and `REFINER` are hub ids or local diffusers folders of an SDXL base and refiner; `"tiny-sdxl"` and
`"tiny-sdxl-refiner"` are random built-in models for offline tests (coloured noise, real plumbing).
`CONCEPTS` are SDXL textual-inversion files (`clip_l` + `clip_g`); `{style}` in the prompt becomes their
trigger tokens. `SWITCH` is the fraction of the schedule the base runs. `NEGATIVE = None` means no negative
prompt (SDXL then conditions on zeros, which is not the same as `""`).""", []),
    ("code", """MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
SWITCH = 0.8                               # the base runs the first 80% of the schedule
CONCEPTS = []                              # SDXL embeddings ({clip_l, clip_g}); their tokens fill {style}
SEEDS = [101, 202, 303]
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = None
STEPS = 40
WIDTH = 1024
HEIGHT = 1024
GUIDANCE_SCALE = 5.0                       # classifier-free guidance
SCHEDULER = "euler"
OUT_DIR = "outputs"                        # images go to OUT_DIR/NAME/
NAME = "sdxl-refiner-notebook"
MEMORY_SAVERS = IN_COLAB                   # CPU offload + VAE tiling: SDXL on a 16 GB GPU""", ["parameters"]),
    ("md", "## Load the base, the refiner and the concepts", []),
    ("code", """from pathlib import Path

from IPython.display import display

from sd_styles.concepts import add_concepts
from sd_styles.grid import make_grid
from sd_styles.metadata import cell_filename, save_png
from sd_styles.models import load_model
from sd_styles.rendering import make_recipe, render

model = load_model(MODEL, refiner=REFINER)  # the refiner shares the base's text_encoder_2 and VAE when identical
if MEMORY_SAVERS:
    model.enable_memory_savers(cpu_offload=True, vae_tiling=True)
tokens = [c.token for c in add_concepts(model, CONCEPTS)] if CONCEPTS else []
prompt = PROMPT.replace("{style}", " and ".join(tokens))
print(model.family, model.native_size, "refiner:", model.refiner.source, "| prompt:", prompt)""", []),
    ("md", "## Render: the same seeds with the base alone, then with the refiner from the switch on", []),
    ("code", """settings = dict(negative_prompt=NEGATIVE, steps=STEPS, width=WIDTH, height=HEIGHT, cfg=GUIDANCE_SCALE,
                scheduler=SCHEDULER)
base_alone = render(model, [make_recipe(model, prompt, seed=s, refiner=None, **settings) for s in SEEDS])
refined = render(model, [make_recipe(model, prompt, seed=s, refiner_switch=SWITCH, **settings) for s in SEEDS])

folder = Path(OUT_DIR) / NAME
for kind, results in (("base", base_alone), ("refined", refined)):
    for r in results:
        print(save_png(r.image, folder / cell_filename(r.recipe, stem=kind), r.recipe))""", []),
    ("md", "## Side by side", []),
    ("code", """grid = make_grid([[r.image for r in base_alone], [r.image for r in refined]],
                 column_labels=[f"seed {s}" for s in SEEDS],
                 row_labels=["base alone", f"base + refiner (switch at {SWITCH:g})"])
grid.save(folder / "grid.png")
display(grid)""", []),
    ("md", "How much the refiner changed each image (mean absolute difference, 0-255):", []),
    ("code", """import numpy as np

for s, a, b in zip(SEEDS, base_alone, refined):
    diff = np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).mean()
    print(f"seed {s}: {diff:.2f}")""", []),
]


def build():
    """The notebook, outputs empty."""
    return build_notebook(CELLS)


def main() -> Path:
    return write_notebook(CELLS, HERE / "sdxl_refiner.ipynb")


if __name__ == "__main__":
    print(main())
