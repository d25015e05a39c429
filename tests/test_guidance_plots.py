"""plot_loss_history: one line per guided cell, x = the guided sampling steps, y = the recorded loss."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from sd_styles.plots import plot_loss_history  # noqa: E402
from sd_styles.recipe import Guidance, LossTerm  # noqa: E402
from sd_styles.rendering import make_recipe, render  # noqa: E402


def test_plot_loss_history_draws_each_guided_cell(tiny_model, tmp_path):
    g = Guidance(losses=(LossTerm("blue", 3000.0),), every=2, decoder="linear")
    recipes = [make_recipe(tiny_model, "a cat", seed=s, steps=5, guidance=g) for s in (0, 1)]
    recipes.append(make_recipe(tiny_model, "a cat", seed=2, steps=5))          # plain: no line
    results = render(tiny_model, recipes, progress=False)
    ax = plot_loss_history(results)
    lines = ax.get_lines()
    assert len(lines) == 2
    assert list(lines[0].get_xdata()) == [0, 2, 4]
    assert list(lines[1].get_ydata()) == pytest.approx(results[1].loss_history)
    assert "blue:3000" in ax.get_title() and "seed 0" in lines[0].get_label()
    ax.figure.savefig(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0
    with pytest.raises(ValueError, match="one per result"):
        plot_loss_history(results, labels=["just one"])
