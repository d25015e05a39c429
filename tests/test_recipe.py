"""Recipes as contracts: loss functions in batch keys, concepts recorded as the tokenizer reads them, one set of
limits for every entry point, and no import cycles between the data modules."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch
from helpers import pixel_diff
from safetensors.torch import save_file

from sd_styles.commands.common import seed_int, size
from sd_styles.concepts import add_concept, remove_concept
from sd_styles.errors import BadInput
from sd_styles.experiment import experiment, parse_experiment, plan_cells, with_seeds
from sd_styles.recipe import Guidance, LossTerm, Recipe
from sd_styles.rendering import make_recipe, render

PACKAGE = Path(__file__).resolve().parents[1] / "sd_styles"


def brighter(images: torch.Tensor) -> torch.Tensor:
    return -images.mean()


def darker(images: torch.Tensor) -> torch.Tensor:
    return images.mean()


def test_api_losses_with_one_name_but_different_functions_never_share_a_batch(tiny_model):
    up = Guidance((LossTerm("mine", 50000.0, fn=brighter),))
    down = Guidance((LossTerm("mine", 50000.0, fn=darker),))
    a = make_recipe(tiny_model, "a cat", seed=0, steps=3, width=32, height=32, guidance=up)
    b = make_recipe(tiny_model, "a cat", seed=0, steps=3, width=32, height=32, guidance=down)
    assert a.batch_key() != b.batch_key() and a != b
    assert a == make_recipe(tiny_model, "a cat", seed=0, steps=3, width=32, height=32, guidance=up)
    together = render(tiny_model, [a, b], batch_size=8, progress=False)
    alone = [render(tiny_model, [r], progress=False)[0] for r in (a, b)]
    assert pixel_diff(together[0].image, together[1].image) > 2     # brighter is not darker
    assert [pixel_diff(t.image, s.image) for t, s in zip(together, alone)] == [0, 0]


def test_default_scales_are_filled_where_specs_are_parsed(tiny_model):
    g = Guidance((LossTerm("blue"), LossTerm("sepia", 5.0)))
    assert g.losses[0].scale is None                                 # a frozen dataclass only stores what it is given
    recipe = make_recipe(tiny_model, "a cat", steps=2, guidance=g)
    assert [t.scale for t in recipe.guidance.losses] == [200.0, 5.0]
    with pytest.raises(BadInput, match="no scale"):
        Recipe(prompt="x", guidance=g).check()


@pytest.fixture
def easy_negatives(tiny_model, tmp_path):
    """EasyNegative and EasyNegativeV2 loaded into the tiny model (one token is a prefix of the other)."""
    tokens = []
    for i, token in enumerate(("EasyNegative", "EasyNegativeV2")):
        path = tmp_path / f"{token}.safetensors"
        save_file({token: torch.randn(1, 32, generator=torch.Generator().manual_seed(i))}, str(path))
        tokens.append(add_concept(tiny_model, str(path)).token)
    yield tokens
    for token in tokens:
        remove_concept(tiny_model, token)


def test_concepts_are_recorded_as_whole_tokens(tiny_model, easy_negatives):
    recipe = make_recipe(tiny_model, "a cat", negative_prompt="EasyNegativeV2, blurry", steps=2)
    assert [c.token for c in recipe.concepts] == ["EasyNegativeV2"]
    both = make_recipe(tiny_model, "a cat", negative_prompt="EasyNegativeV2, EasyNegative", steps=2)
    assert sorted(c.token for c in both.concepts) == ["EasyNegative", "EasyNegativeV2"]
    assert make_recipe(tiny_model, "EasyNegatives are fine", steps=2).concepts[0].token == "EasyNegative"


def test_experiment_cells_record_whole_tokens_too(tiny_model, easy_negatives, tmp_path):
    exp = experiment("a cat in the style of {style}", [tiny_model.concepts["EasyNegative"].source], [1],
                     negative_prompt="EasyNegativeV2", steps=2)
    [cell] = plan_cells(tiny_model, exp)
    assert [c.token for c in cell.recipe.concepts] == ["EasyNegative", "EasyNegativeV2"]  # own style first


# ------------------------------------------------------------------------------------ one rule, every entry

def _messages(bad_seed: int) -> list[str]:
    """The message each entry point gives for the same bad seed."""
    out = []
    for call in (lambda: Recipe(prompt="x", seed=bad_seed).check(),
                 lambda: with_seeds(experiment("{style}", ["a/b"], [0]), [bad_seed]),
                 lambda: parse_experiment({"prompt": "{style}", "styles": [{"concept": "a/b", "seed": bad_seed}]}),
                 lambda: seed_int(str(bad_seed))):
        with pytest.raises((BadInput, argparse.ArgumentTypeError)) as err:
            call()
        out.append(str(err.value))
    return out


@pytest.mark.parametrize("bad_seed", [2**63, -1])
def test_seed_range_reads_the_same_everywhere(bad_seed):
    assert all("must be an integer from 0 to 2**63-1" in m for m in _messages(bad_seed)), _messages(bad_seed)
    assert seed_int(str(2**63 - 1)) == 2**63 - 1


def test_size_rule_reads_the_same_everywhere():
    with pytest.raises(argparse.ArgumentTypeError, match="width must be a positive multiple of 8"):
        size("500x512")
    with pytest.raises(BadInput, match="width must be a positive multiple of 8"):
        Recipe(prompt="x", width=500).check()
    with pytest.raises(BadInput, match="height must be a positive multiple of 8"):
        parse_experiment({"prompt": "{style}", "height": 4, "styles": [{"concept": "a/b", "seed": 0}]})


# -------------------------------------------------------------------------------------------- import cycles

def _imports(module: str) -> set[str]:
    """sd_styles modules imported anywhere in `module` (top level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module.split(".")[: -node.level] if "." in module else []
            target = ".".join([*base, node.module] if node.module else base)
            names = [target] if node.module else [a.name for a in node.names]
            found.update(n for n in names if (PACKAGE / f"{n.replace('.', '/')}.py").is_file())
    return found


def _reaches(start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        for dep in _imports(todo.pop()) - seen:
            if dep == goal:
                return True
            seen.add(dep)
            todo.append(dep)
    return False


@pytest.mark.parametrize("a, b", [("recipe", "losses"), ("experiment", "experiment_schema")])
def test_no_import_cycle(a, b):
    assert _reaches(b, a) is False or _reaches(a, b) is False, f"{a} and {b} import each other"
