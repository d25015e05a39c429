"""Notebook plots: how the weighted loss of each guided cell falls over the sampling steps."""

from __future__ import annotations

from typing import Sequence


def guided_steps(result) -> list[int]:
    """The 0-based sampling steps at which `result.loss_history` was recorded (from its recipe's guidance)."""
    recipe = result.recipe
    g = recipe.guidance
    steps = [i for i in range(recipe.steps) if g is not None and g.active(i, recipe.steps)]
    # the history is authoritative: fall back to 0..n-1 if a scheduler ran another number of steps
    return steps if len(steps) == len(result.loss_history) else list(range(len(result.loss_history)))


def cell_label(result) -> str:
    """'seed 101 · <style> a mouse...' : short enough for a legend."""
    recipe = result.recipe
    prompt = recipe.prompt if len(recipe.prompt) <= 32 else recipe.prompt[:31] + "…"
    return f"seed {recipe.seed} · {prompt}"


def plot_loss_history(results: Sequence, ax=None, *, labels: Sequence[str] | None = None, log: bool = False,
                      title: str | None = None):
    """Loss vs sampling step, one line per guided result (plain results are skipped); returns the Axes.

    `results` are `sd_styles.rendering.Result`s (or anything with `.loss_history` and `.recipe`);
    `labels` overrides the legend entries; `log` puts the loss on a log scale.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    guided = [(k, r) for k, r in enumerate(results) if r.loss_history]
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"labels: expected {len(results)} (one per result), got {len(labels)}")
    for k, r in guided:
        ax.plot(guided_steps(r), r.loss_history, marker="o", markersize=3,
                label=labels[k] if labels is not None else cell_label(r))
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("sampling step")
    ax.set_ylabel("weighted loss (scale × loss)")
    first = guided[0][1].recipe.guidance if guided else None
    ax.set_title(title if title is not None else (f"loss guidance: {first.label()} · decoder {first.decoder}"
                                                  if first is not None else "no guided results"))
    if guided:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax
