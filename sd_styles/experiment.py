"""Experiments: one prompt, several styles with their own seeds, plain and optionally loss-guided cells.

An experiment comes from a TOML file (`load_experiment`) or from code (`experiment(...)`, the notebook's
way); both go through the same validation. `plan_cells` turns it into recipes for a loaded model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import BadInput
from .experiment_schema import TOML_KEYS, parse_table
from .limits import check_seed
from .metadata import cell_filename, slug
from .hub import DEFAULT_MODEL  # not from .models: reading a file must not import diffusers
from .recipe import ConceptRef, Guidance, Recipe
from .schedulers import DEFAULT_SCHEDULER

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

KINDS = ("plain", "guided")
STYLE_SLOT = "{style}"  # replaced by each style's trigger token in prompts
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Style:
    """One column of an experiment: a concept source and the seed its cells use."""

    concept: str                   # hub id, file or folder (relative paths resolved at load)
    seed: int
    token: str | None = None       # overrides the concept's own trigger token


@dataclass(frozen=True)
class Experiment:
    """Everything `sd-styles run` needs: shared settings, the styles, and optional loss guidance."""

    name: str                      # output sub-folder
    prompt: str                    # with {style}
    styles: tuple[Style, ...]
    model: str = DEFAULT_MODEL
    negative_prompt: str | None = None  # None: no negative prompt (SDXL: zeros); "" is an empty text
    steps: int = 50
    guidance_scale: float = 7.5    # classifier-free guidance (cfg)
    width: int | None = None       # None: the model's native size
    height: int | None = None
    scheduler: str = DEFAULT_SCHEDULER
    guidance: Guidance | None = None  # present: every style is rendered plain and guided
    refiner: str | None = None     # SDXL refiner for the last part of every cell's schedule
    refiner_switch: float = 0.8    # fraction of the schedule the base runs

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.guidance is not None else KINDS[:1]


@dataclass(frozen=True)
class Cell:
    """One image of an experiment: a style (column) rendered plain or guided (row)."""

    column: int                    # index of the style in the experiment
    kind: str                      # plain | guided
    token: str                     # the style's trigger token
    concept: str                   # the style's concept source
    recipe: Recipe

    @property
    def filename(self) -> str:
        """`01-gta5-artwork-plain-s101-<digest8>.png`: sorted by column, unique per recipe."""
        return cell_filename(self.recipe, stem=f"{self.column + 1:02d}-{slug(self.token) or 'style'}-{self.kind}")


@dataclass
class CellResult:
    """One cell of an experiment, rendered now or read back from its finished file."""

    cell: Cell
    image: Any                     # PIL.Image.Image
    loss_history: list[float]
    path: Path | None = None       # where it is saved (None: only in memory)
    rendered: bool = True          # False when an earlier run had already finished it
    execution: dict = field(default_factory=dict)  # fingerprint, call shape and process that rendered it

    @property
    def recipe(self) -> Recipe:
        """The cell's recipe (as `rendering.Result.recipe`, so plots and exports take either)."""
        return self.cell.recipe

    @property
    def final_loss(self) -> float | None:
        return self.loss_history[-1] if self.loss_history else None


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment TOML file (BadInput naming the key and what is allowed)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path}: no such experiment file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: cannot read it ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise BadInput(f"{path}: invalid TOML ({err})") from None
    return parse_experiment(data, where=path.name, base_dir=path.parent, default_name=path.stem)


def parse_experiment(data: dict, *, where: str = "experiment", base_dir: str | Path | None = None,
                     default_name: str = "experiment") -> Experiment:
    """Validate a parsed TOML document (or an equivalent dict) into an Experiment."""
    fields = parse_table(data, where)
    name = fields.pop("name", default_name)
    if not _NAME.match(name):
        raise BadInput(f"{where}: name {name!r} must be a folder name: letters, digits, '.', '_' and '-', "
                       "starting with a letter or digit")
    styles = tuple(Style(**{**s, "concept": _resolve_source(s["concept"], base_dir)}) for s in fields.pop("styles"))
    exp = Experiment(name=name, styles=styles, **fields)
    if STYLE_SLOT not in exp.prompt:
        raise BadInput(f"{where}: prompt must contain {STYLE_SLOT} (replaced by each style's token), "
                       f"got {exp.prompt!r}")
    return exp


def experiment(prompt: str, concepts: Sequence[str], seeds: Sequence[int], *, name: str = "experiment",
               **settings) -> Experiment:
    """Build an experiment in code with the file's keys (model, steps, width, ..., guidance as a table)."""
    if len(concepts) != len(seeds):
        raise BadInput(f"got {len(concepts)} concepts but {len(seeds)} seeds; give one seed per concept")
    data = {"name": name, "prompt": prompt, **settings,
            "styles": [{"concept": c, "seed": s} for c, s in zip(concepts, seeds)]}
    return parse_experiment(data, base_dir=Path.cwd())


def _resolve_source(source: str, base_dir: str | Path | None) -> str:
    """Local paths become absolute (relative to the experiment file first) so the recipe works anywhere."""
    path = Path(source).expanduser()
    if base_dir is not None and not path.is_absolute() and (Path(base_dir) / path).exists():
        return str((Path(base_dir) / path).resolve())
    return str(path.resolve()) if path.exists() else source  # a hub id stays as given


def with_seeds(exp: Experiment, seeds: Sequence[int]) -> Experiment:
    """The same experiment with new seeds, exactly one per style."""
    seeds = list(seeds)
    if len(seeds) != len(exp.styles):
        raise BadInput(f"--seeds gives {len(seeds)} seed(s) but the experiment has {len(exp.styles)} styles; "
                       "give exactly one per style, comma-separated")
    for s in seeds:
        check_seed(s, "each seed")
    return replace(exp, styles=tuple(replace(st, seed=s) for st, s in zip(exp.styles, seeds)))


def pick_styles(exp: Experiment, which: Iterable[int | str]) -> Experiment:
    """Keep only some styles, given by index or concept source, in the order given."""
    picked = []
    for w in which:
        if isinstance(w, int) and 0 <= w < len(exp.styles):
            picked.append(exp.styles[w])
            continue
        match = [s for s in exp.styles if s.concept == w or (isinstance(w, str) and s.concept.endswith("/" + w))]
        if not match:
            raise BadInput(f"no style {w!r} in the experiment; styles: "
                           f"{', '.join(s.concept for s in exp.styles)} (or indices 0-{len(exp.styles) - 1})")
        picked.append(match[0])
    if not picked:
        raise BadInput("pick at least one style")
    return replace(exp, styles=tuple(picked))


def load_styles(model, exp: Experiment, *, progress: bool = True) -> list[str]:
    """Load every style's concept into `model` (a progress bar per concept); returns their tokens."""
    from tqdm.auto import tqdm

    from .concepts import add_concept

    tokens = []
    for style in tqdm(exp.styles, desc="concepts", unit="concept", disable=not progress):
        tokens.append(add_concept(model, style.concept, token=style.token).token)
    return tokens


def plan_cells(model, exp: Experiment, kinds: Sequence[str] | None = None) -> list[Cell]:
    """The cells of `exp` for `model` (its styles already loaded): plain row first, then guided."""
    from .rendering import make_recipe

    kinds = tuple(kinds or exp.kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise BadInput(f"unknown cell kind {kind!r}; allowed: {', '.join(KINDS)}")
        if kind == "guided" and exp.guidance is None:
            raise BadInput("guided cells need [guidance] (a loss) in the experiment")
    size = {k: v for k, v in (("width", exp.width), ("height", exp.height)) if v is not None}
    cells = []
    for kind in kinds:
        for column, style in enumerate(exp.styles):
            concept = _loaded(model, style)
            prompt = exp.prompt.replace(STYLE_SLOT, concept.token)
            negative = None if exp.negative_prompt is None else exp.negative_prompt.replace(STYLE_SLOT, concept.token)
            refiner = {"refiner": exp.refiner, "refiner_switch": exp.refiner_switch} if exp.refiner else {}
            recipe = make_recipe(model, prompt, negative_prompt=negative, seed=style.seed, steps=exp.steps,
                                 cfg=exp.guidance_scale, scheduler=exp.scheduler,
                                 guidance=exp.guidance if kind == "guided" else None,
                                 concepts=_concept_refs(model, concept, prompt + " " + (negative or "")),
                                 **size, **refiner)
            cells.append(Cell(column, kind, concept.token, style.concept, recipe))
    return cells


def _loaded(model, style: Style):
    """The loaded concept of `style` (by its token override, else by source)."""
    for concept in model.concepts.values():
        if (style.token is None or concept.token == style.token) and concept.source == style.concept:
            return concept
    raise BadInput(f"style {style.concept} is not loaded into the model; call load_styles(model, exp) first")


def _concept_refs(model, own, text: str) -> tuple[ConceptRef, ...]:
    """The style's own concept, plus any other loaded concept the prompt uses (as the tokenizer reads it)."""
    from .rendering import prompt_concepts

    others = [c for c in prompt_concepts(model, text) if c.token != own.token]
    return tuple(ConceptRef(c.source, c.token, c.sha256, c.revision) for c in [own, *others])


__all__ = ["Cell", "CellResult", "Experiment", "KINDS", "Style", "TOML_KEYS", "experiment", "load_experiment", "load_styles",
           "parse_experiment", "pick_styles", "plan_cells", "with_seeds"]
