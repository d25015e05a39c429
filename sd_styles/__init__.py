"""sd-styles: Stable Diffusion style work on the Hugging Face stack.

    import sd_styles as sds
    model = sds.load_model("tiny")                       # or a hub id / local folder
    recipe = sds.make_recipe(model, "a mouse in a top hat", seed=1, steps=20)
    [result] = sds.render(model, [recipe])
    result.image.save("mouse.png")
"""

from importlib import import_module

__version__ = "0.2.0"

# Public name -> defining module. Imported lazily so `sd-styles --help` and `import sd_styles` stay fast
# and the command line can quiet library logging before diffusers / transformers load.
_EXPORTS = {
    "BadInput": "errors", "RuntimeFailure": "errors", "SdStylesError": "errors",
    "DEFAULT_MODEL": "models", "StyleModel": "models", "load_model": "models", "load_refiner": "refiner",
    "ConceptRef": "recipe", "Guidance": "recipe", "LossTerm": "recipe", "Recipe": "recipe",
    "Result": "rendering", "make_recipe": "rendering", "render": "rendering",
    "add_concept": "concepts", "add_concepts": "concepts", "remove_concept": "concepts", "read_concept": "concepts",
    "default_styles": "catalog", "find_style": "catalog", "load_catalog": "catalog",
    "color_loss": "losses", "canny_loss": "losses", "clip_loss": "losses",
    "plot_loss_history": "plots", "rerun": "reproduce", "read_recipe": "metadata", "save_png": "metadata",
    "load_experiment": "experiment", "load_styles": "experiment",
    "pick_styles": "experiment", "with_seeds": "experiment", "plan_cells": "experiment",
    "render_cells": "runner", "run_experiment": "runner", "results_grid": "grid", "compare": "grid",
    "export_run": "export", "render_plain": "runner", "render_guided": "runner", "CellResult": "experiment",
    "render_padded": "rendering", "check_fits": "memory", "estimate_memory": "memory",
    "execution_fingerprint": "fingerprint", "optimize": "speed",
    "train": "training", "TrainResult": "training", "TrainConfig": "training_config",
    "evaluate": "evaluation",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sd_styles' has no attribute {name!r}")
