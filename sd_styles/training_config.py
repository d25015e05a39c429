"""Settings of a textual-inversion run, with the defaults of diffusers' README recipe (3000 steps, lr 5e-4 scaled)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import BadInput

# Kept free of torch imports: the command line builds its --help from these.
FORMATS = ("diffusers", "sd-concepts", "a1111")
PROPERTIES = ("object", "style")  # which prompt templates (training_data.TEMPLATES)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MAX_VECTORS = 64  # CLIP sees 77 tokens; the templates need a few of them


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a run besides the model and the images."""

    token: str                        # placeholder token, e.g. "<my-style>"; extra vectors become tok_1, tok_2...
    init_word: str                    # the vectors start as this word's embedding (one token, or one per vector)
    steps: int = 3000                 # optimizer steps (each is grad_accum micro-batches)
    size: int | None = None           # training resolution in pixels; None: the model's native size
    seed: int = 0                     # fixes data order, flips, templates, noise and timesteps
    learnable_property: str = "object"  # object | style: which prompt templates (the paper's two lists)
    lr: float = 5e-4                  # base learning rate (diffusers' README value)
    scale_lr: bool = True             # multiply lr by batch_size * grad_accum, as --scale_lr does
    batch_size: int = 1               # images per micro-batch
    grad_accum: int = 4               # micro-batches per optimizer step
    num_vectors: int = 1              # vectors learned for the token
    lr_scheduler: str = "constant"    # diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 0          # warm-up steps for the *_with_warmup / linear / cosine schedules
    weight_decay: float = 1e-2        # AdamW weight decay (diffusers' default)
    center_crop: bool = True          # square centre crop before the resize
    preview_every: int = 500          # render a preview every N steps (0: never)
    preview_prompt: str | None = None  # default: the first template with the token
    preview_steps: int = 25           # sampling steps of a preview
    save_every: int = 500             # checkpoint every N steps (0: only at the end)
    format: str = "diffusers"         # diffusers | sd-concepts | a1111

    def check(self) -> "TrainConfig":
        """Fail fast, one line naming the bad value."""
        ints = {"steps": (self.steps, 1), "seed": (self.seed, 0), "batch_size": (self.batch_size, 1),
                "grad_accum": (self.grad_accum, 1), "num_vectors": (self.num_vectors, 1),
                "lr_warmup_steps": (self.lr_warmup_steps, 0), "preview_every": (self.preview_every, 0),
                "preview_steps": (self.preview_steps, 1), "save_every": (self.save_every, 0)}
        for name, (value, low) in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BadInput(f"{name} must be an integer >= {low}, got {value!r}")
        if self.num_vectors > MAX_VECTORS:
            raise BadInput(f"num_vectors must be at most {MAX_VECTORS}, got {self.num_vectors}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 8 or self.size % 8):
            raise BadInput(f"size must be a positive multiple of 8, got {self.size!r}")
        if self.learnable_property not in PROPERTIES:
            raise BadInput(f"learnable_property must be one of {', '.join(PROPERTIES)}, got {self.learnable_property!r}")
        for name, v in (("lr", self.lr), ("weight_decay", self.weight_decay)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                raise BadInput(f"{name} must be a finite positive number, got {v!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise BadInput(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        if self.format not in FORMATS:
            raise BadInput(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not isinstance(self.init_word, str) or not self.init_word.strip():
            raise BadInput("--init-word must be a word, e.g. 'cat' or 'painting'")
        return self

    @property
    def effective_lr(self) -> float:
        """The optimizer's learning rate after --scale-lr."""
        return self.lr * self.batch_size * self.grad_accum if self.scale_lr else self.lr

    @property
    def templates(self) -> tuple[str, ...]:
        from .training_data import TEMPLATES

        return TEMPLATES[self.learnable_property]

    def settings(self) -> dict:
        """The config as JSON-ready values (stored in checkpoints and with the output)."""
        return asdict(self)
