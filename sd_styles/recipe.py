"""The recipe of one cell: everything that decides its pixels, as one frozen dataclass."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

from .errors import BadInput
from .limits import check_cfg, check_seed, check_side, check_steps
from .schedulers import DEFAULT_SCHEDULER, check_scheduler

DECODERS = ("vae", "tiny", "linear")  # or a local AutoencoderTiny folder


@dataclass(frozen=True)
class LossTerm:
    """One creative loss and its weight; `fn` (API only) overrides the lookup of `name`.

    `fn` takes part in equality (and so in `Recipe.batch_key`): two API terms that share a name but not
    a function are different losses and never share a batch. A `scale` of None is filled with the loss's
    default where specs are parsed (`make_recipe`, the loss parsers); a recipe only holds numbers.
    """

    name: str                      # built-in loss name ("blue", "canny", ...) or "module:function"
    scale: float | None = None     # multiplies the loss before its gradient; None: the loss's default (resolved)
    fn: Callable | None = field(default=None, repr=False)  # not serialised; compared by identity


@dataclass(frozen=True)
class Guidance:
    """Loss guidance settings shared by the cells of a guided pass."""

    losses: tuple[LossTerm, ...]   # summed
    every: int = 1                 # guide every k-th step (k=1: every step)
    start: float = 0.0             # first guided step, as a fraction of the schedule
    end: float = 1.0               # guided steps stop before this fraction
    decoder: str = "vae"           # vae | tiny | linear | path to an AutoencoderTiny folder

    def active(self, i: int, steps: int) -> bool:
        """Whether step i (0-based) of `steps` is guided."""
        return i % self.every == 0 and self.start * steps <= i < self.end * steps

    def label(self) -> str:
        return "+".join(f"{t.name}:{t.scale:g}" if t.scale is not None else t.name for t in self.losses)


@dataclass(frozen=True)
class ConceptRef:
    """A textual-inversion concept a recipe depends on."""

    source: str                    # hub id, file or folder, as given
    token: str                     # the trigger token used in prompts
    sha256: str = ""               # of the embedding file, for provenance
    revision: str | None = None    # hub commit of a hub concept (rerun pins it); None for files


@dataclass(frozen=True)
class Recipe:
    """(model, prompt, negative, concepts, seed, size, steps, cfg, scheduler, refiner, guidance) -> one image."""

    prompt: str
    negative_prompt: str | None = ""  # None: no negative prompt (SDXL conditions on zeros); "" is an empty text
    seed: int = 0
    width: int = 512
    height: int = 512
    steps: int = 50
    cfg: float = 7.5               # classifier-free guidance scale (<= 1 disables the unconditional pass)
    scheduler: str = DEFAULT_SCHEDULER
    model: str = "CompVis/stable-diffusion-v1-4"
    model_revision: str | None = None
    concepts: tuple[ConceptRef, ...] = ()
    guidance: Guidance | None = None
    refiner: str | None = None     # SDXL refiner (hub id / folder / "tiny-sdxl-refiner"); None: the base alone
    refiner_revision: str | None = None
    refiner_switch: float = 0.8    # fraction of the schedule the base runs (A1111's "Refiner switch at")

    def check(self) -> "Recipe":
        """Fail fast with the bad value in the message (exit code 2 on the command line)."""
        check_side(self.width, "width")
        check_side(self.height, "height")
        check_steps(self.steps)
        check_cfg(self.cfg)
        check_seed(self.seed)
        for name, v in (("prompt", self.prompt), ("model", self.model)):
            if not isinstance(v, str):  # recipes also come from files (rerun): every field is checked
                raise BadInput(f"{name} must be a string, got {v!r}")
        for c in self.concepts:
            if not isinstance(c.source, str) or not isinstance(c.token, str) or not isinstance(c.sha256, str):
                raise BadInput(f"concept entries need string source, token and sha256, got {c!r}")
        check_scheduler(self.scheduler)
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise BadInput(f"negative prompt must be a string or None, got {self.negative_prompt!r}")
        switch = self.refiner_switch
        if isinstance(switch, bool) or not isinstance(switch, (int, float)) or not 0 < switch < 1:
            raise BadInput(f"refiner switch must be a number between 0 and 1 (exclusive), got {switch!r}")
        if self.guidance is not None:
            check_guidance(self.guidance)
        return self

    @property
    def guided(self) -> bool:
        return self.guidance is not None and any(t.scale != 0 for t in self.guidance.losses)

    def batch_key(self) -> tuple:
        """Cells with equal keys can share one batch (prompt, negative prompt and seed may differ).

        A guidance whose scales are all 0 does nothing, so such a cell batches with the plain ones."""
        guidance = self.guidance if self.guided else None
        return (self.width, self.height, self.steps, self.cfg, self.scheduler, self.model, guidance,
                self.refiner, self.refiner_switch if self.refiner is not None else None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for c in d["concepts"]:
            if c.get("revision") is None:  # files have none: their recipes (and digests) stay as before
                c.pop("revision", None)
        if self.refiner is None:  # recipes without a refiner keep the keys (and digests) they always had
            for key in ("refiner", "refiner_revision", "refiner_switch"):
                d.pop(key)
        if self.guidance is not None:
            for term in d["guidance"]["losses"]:
                term.pop("fn", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["concepts"] = tuple(ConceptRef(**c) for c in d.get("concepts", ()))
        g = d.get("guidance")
        if g is not None:
            terms = tuple(LossTerm(name=t["name"], scale=float(t["scale"])) for t in g["losses"])
            d["guidance"] = Guidance(**{**g, "losses": terms})
        return cls(**d)

    def digest(self) -> str:
        """Stable hash of everything that decides the pixels (used to recognise finished cells)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def with_seed(self, seed: int) -> "Recipe":
        return replace(self, seed=seed)


def check_guidance(g: Guidance) -> Guidance:
    if not g.losses:
        raise BadInput("guidance needs at least one loss")
    for t in g.losses:
        if not isinstance(t.name, str) or not t.name.strip():
            raise BadInput(f"loss name must be a non-empty string, got {t.name!r}")
        if t.scale is None:
            raise BadInput(f"loss {t.name!r} has no scale: build recipes with make_recipe (which fills in the "
                           "loss's default scale) or give LossTerm a scale")
        if not isinstance(t.scale, (int, float)) or not math.isfinite(t.scale):
            raise BadInput(f"loss scale must be a finite number, got {t.scale!r} for {t.name!r}")
    if not isinstance(g.every, int) or g.every < 1:
        raise BadInput(f"loss every must be an integer >= 1, got {g.every!r}")
    if not (0.0 <= g.start < g.end <= 1.0):
        raise BadInput(f"loss start/end must satisfy 0 <= start < end <= 1, got {g.start!r}, {g.end!r}")
    if not isinstance(g.decoder, str) or not g.decoder:
        raise BadInput(f"loss decoder must be one of {', '.join(DECODERS)} or a folder, got {g.decoder!r}")
    return g
