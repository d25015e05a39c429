"""Build notebooks/train_concept.ipynb from the cells below (run: python notebooks/build_train_concept.py).

The notebook is generated so it stays reviewable in diffs and is always stored without outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # nbcells.py, the builders' shared part, sits beside this script
from nbcells import INSTALL_NOTE, build_notebook, install_cell, write_notebook  # noqa: E402


CELLS: list[tuple[str, str, list[str]]] = [  # (kind, source, tags)
    ("md", f"""# Train your own concept (textual inversion) and score it

Teach the model a style or an object from 3-5 pictures, look at the loss and the previews, generate
with the new token next to its init word, and score the result with CLIP-I, CLIP-T and DINO.

{INSTALL_NOTE} The default 3000 steps take tens of minutes on a GPU.""", []),
    ("code", install_cell("train_concept.ipynb", ""), []),
    ("md", """## Parameters
`IMAGES` is a folder of 3-5 pictures (any size and format). `TOKEN` is the new placeholder and
`INIT_WORD` a word close to the concept (one token). `PROPERTY` is `"object"` or `"style"`.
`CLIP` / `DINO` are the scoring models (hub ids or local folders; `DINO = None` skips DINO).""", []),
    ("code", """MODEL = "CompVis/stable-diffusion-v1-4"
IMAGES = "my-pictures"
TOKEN = "<my-concept>"
INIT_WORD = "toy"
PROPERTY = "object"
STEPS = 3000
SIZE = None                    # None: the model's native size
LR = 5e-4                      # scaled by batch size x gradient accumulation, as diffusers' README does
BATCH_SIZE = 1
GRAD_ACCUM = 4
PREVIEW_EVERY = 500
PREVIEW_STEPS = 25
SAVE_EVERY = 500
SEED = 0
OUT = "outputs/my-concept.safetensors"
GEN_STEPS = 50                 # sampling steps for the comparison below
GEN_SEEDS = [1, 2, 3, 4]
CLIP = "openai/clip-vit-base-patch32"
DINO = "facebook/dino-vits16\"""", ["parameters"]),
    ("md", "## Train (re-running this cell continues from the last checkpoint)", []),
    ("code", """import sd_styles as sds

model = sds.load_model(MODEL)
result = sds.train(model, IMAGES, TOKEN, INIT_WORD, OUT, resume=True, steps=STEPS, size=SIZE, seed=SEED,
                   learnable_property=PROPERTY, lr=LR, batch_size=BATCH_SIZE, grad_accum=GRAD_ACCUM,
                   preview_every=PREVIEW_EVERY, preview_steps=PREVIEW_STEPS, save_every=SAVE_EVERY)
result.out""", []),
    ("md", "## The loss curve", []),
    ("code", """import matplotlib.pyplot as plt

steps = [s for s, _, _ in result.losses]
losses = [v for _, v, _ in result.losses]
window = max(1, len(losses) // 20)
smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1]) for i in range(len(losses))]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(steps, losses, alpha=0.3, label="per step")
ax.plot(steps, smooth, label=f"mean of {window}")
ax.set_xlabel("step"); ax.set_ylabel("MSE loss"); ax.legend(); ax.grid(alpha=0.3)
plt.show()""", []),
    ("md", "## Previews (fixed seed, rendered through our own loop during training)", []),
    ("code", """from IPython.display import display
from PIL import Image

for path in result.previews:
    print(path.name)
    display(Image.open(path))""", []),
    ("md", "## The new concept next to its init word", []),
    ("code", """from pathlib import Path

import numpy as np

template = "a painting in the style of {}" if PROPERTY == "style" else "a photo of a {}"
width = SIZE or model.native_size[0]
recipes = [sds.make_recipe(model, template.format(word), seed=s, steps=GEN_STEPS, width=width, height=width)
           for word in (TOKEN, INIT_WORD) for s in GEN_SEEDS]
rendered = sds.render(model, recipes)
gen_dir = Path(OUT).with_name(Path(OUT).name + ".generated")
gen_dir.mkdir(parents=True, exist_ok=True)
for r in rendered[:len(GEN_SEEDS)]:
    r.image.save(gen_dir / f"seed-{r.recipe.seed}.png")
print(f"top: {TOKEN}   bottom: {INIT_WORD}")
for part in (rendered[:len(GEN_SEEDS)], rendered[len(GEN_SEEDS):]):
    display(Image.fromarray(np.hstack([np.asarray(r.image) for r in part])))""", []),
    ("md", """## Score: CLIP-I, CLIP-T, DINO
Raw cosine similarities (DreamBench protocol; CLIP-T with the placeholder removed from the prompt, as
the textual-inversion paper does). Published textual inversion on SD 1.x (DreamBench): DINO 0.569,
CLIP-I 0.780, CLIP-T 0.255; backbone, scaling and prompt set all move these numbers.""", []),
    ("code", """scores = sds.evaluate(gen_dir, IMAGES, template.format(TOKEN), clip=CLIP, dino=DINO)
{k: scores[k] for k in ("clip_i", "clip_t", "dino", "n_images", "n_reference", "clip_t_prompt")}""", []),
]


def build():
    """The notebook, outputs empty."""
    return build_notebook(CELLS)


def main() -> Path:
    return write_notebook(CELLS, HERE / "train_concept.ipynb")


if __name__ == "__main__":
    print(main())
