"""Event handlers of the app: thin Gradio wrappers around app_actions, app_compare and app_pnginfo.

Every handler turns our one-line errors into `gr.Error` (a message in the page, never a traceback),
and a failure leaves the model usable for the next job. Jobs run one at a time (the queue's
concurrency group "gpu"); Stop is per browser session. No `from __future__ import annotations`
here: Gradio reads the `gr.Request` annotation to inject the request.
"""

import html
import logging
from pathlib import Path
from typing import Callable, Sequence

import gradio as gr

from .app_actions import (NO_LOSS, GenerateForm, check_form, concept_requests, form_recipes, render_to_file,
                          session_folder, use_concepts)
from .app_jobs import StopSwitch, linear_preview, stream
from .catalog import CatalogStyle
from .errors import BadInput, SdStylesError

log = logging.getLogger(__name__)


def page_error(err: Exception) -> gr.Error:
    """One line for the page: our own messages as they are, anything else with its type (logged in full)."""
    if isinstance(err, SdStylesError):
        text = str(err).replace("\n", " ")
    else:
        log.exception("job failed")
        text = f"failed: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
    return gr.Error(html.escape(text), print_exception=False)  # the modal renders HTML: user text stays text


def session_of(request: gr.Request | None) -> str:
    """The browser session's id (each gradio_client Client has its own)."""
    return getattr(request, "session_hash", None) or "anonymous"


class Handlers:
    """The app's event functions, bound to one loaded model, an output root and the style catalog."""

    def __init__(self, model, out: Path, catalog: Sequence[CatalogStyle],
                 on_written: Callable[[Path], None] | None = None) -> None:
        self.model = model
        self.out = Path(out).resolve()
        self.catalog = list(catalog)
        self.switch = StopSwitch()
        self.on_written = on_written or (lambda path: None)

    def folder(self, request: gr.Request | None) -> Path:
        """This session's output folder."""
        return session_folder(self.out, session_of(request))

    def prepare(self, form: GenerateForm, uploads, token: str, folder: Path):
        """Checked form -> recipes, with exactly the form's concepts loaded."""
        form = check_form(form)
        use_concepts(self.model, concept_requests(self.catalog, form.styles, form.hub_concepts, uploads, token,
                                                  folder))
        return form_recipes(self.model, form)

    # --- Generate tab -----------------------------------------------------------------------------------
    def generate(self, prompt, negative_prompt, seed, batch_count, steps, cfg, width, height, scheduler, styles,
                 hub_concepts, loss, loss_arg, loss_scale, loss_every, loss_start, loss_end, loss_decoder, uploads,
                 upload_token, show_preview, request: gr.Request):
        """The Generate button: streams step progress (and an x0 preview), then the gallery of saved PNGs."""
        folder = self.folder(request)
        form = GenerateForm(prompt, negative_prompt, seed, batch_count, steps, cfg, width, height, scheduler,
                            tuple(styles or ()), hub_concepts, loss, loss_arg, loss_scale, loss_every, loss_start,
                            loss_end, loss_decoder)
        try:
            recipes = self.prepare(form, uploads, upload_token, folder)
            preview = linear_preview(self.model) if show_preview else None
        except Exception as err:
            raise page_error(err) from None
        stop = self.switch.begin(session_of(request))
        paths: list[str] = []
        n = len(recipes)
        for k, recipe in enumerate(recipes):
            where = f"image {k + 1} of {n}, seed {recipe.seed}"
            try:
                for kind, value in stream(lambda cb, r=recipe: render_to_file(self.model, r, folder, cb), stop,
                                          preview):
                    if kind == "step":
                        image = value.preview if value.preview is not None else gr.skip()
                        yield gr.skip(), image, f"Rendering {where}: step {value.i + 1} of {recipe.steps}", \
                            gr.skip(), gr.skip()
                    elif kind == "stopping":
                        yield gr.skip(), gr.skip(), f"Stopping {where} after this step…", gr.skip(), gr.skip()
                    elif kind == "stopped":
                        yield paths, gr.skip(), (f"**Stopped** during {where}; {len(paths)} image(s) kept."), \
                            paths or None, paths
                        return
                    else:
                        paths.append(str(value))
                        self.on_written(value)
            except Exception as err:
                raise page_error(err) from None
            yield paths, gr.skip(), f"Done {len(paths)} of {n} (seeds {recipes[0].seed}…{recipe.seed}).", \
                paths, paths

    def api_generate(self, prompt, negative_prompt, seed, steps, cfg, width, height, scheduler, styles,
                     hub_concepts, loss, loss_arg, loss_scale=None, loss_every=1, loss_start=0.0, loss_end=1.0,
                     loss_decoder="vae", request: gr.Request = None):
        """Render one image and return the path of its PNG (with the recipe and A1111 parameters inside)."""
        folder = self.folder(request)
        form = GenerateForm(prompt, negative_prompt, seed, 1, steps, cfg, width, height, scheduler,
                            tuple(styles or ()), hub_concepts, loss, loss_arg, loss_scale, loss_every, loss_start,
                            loss_end, loss_decoder)
        try:
            [recipe] = self.prepare(form, None, "", folder)
            path = render_to_file(self.model, recipe, folder)
        except Exception as err:
            raise page_error(err) from None
        self.on_written(path)
        return str(path)

    def stop(self, request: gr.Request) -> None:
        """Stop: the job of this session ends within the current denoising step; its own stream says so."""
        self.switch.stop(session_of(request))

    @staticmethod
    def reuse_seed(selected):
        """♻️: the seed stored in the selected gallery image (image i of a batch used seed + i)."""
        from .metadata import read_recipe

        if not selected:
            raise gr.Error("select an image in the gallery first", print_exception=False)
        try:
            return read_recipe(selected).seed
        except BadInput as err:
            raise page_error(err) from None

    @staticmethod
    def select(paths, evt: gr.SelectData):
        """Remember the selected gallery image (for ♻️)."""
        return paths[evt.index] if paths and 0 <= evt.index < len(paths) else None

    @staticmethod
    def default_scale(loss):
        """Show the loss's own default scale when another loss is picked."""
        from .losses import loss_default_scale

        return None if not loss or loss == NO_LOSS else loss_default_scale(loss)

    # --- Compare styles tab -----------------------------------------------------------------------------
    def compare(self, prompt, styles, seeds, steps, cfg, width, height, scheduler, loss, loss_arg, loss_scale,
                loss_every, loss_decoder, uploads, request: gr.Request):
        """Render every style plain (and guided) exactly as `sd-styles run`, then the grid and the blog zip."""
        from .app_compare import CompareForm, compare_experiment, labelled_cells, run_compare, zip_export

        folder = self.folder(request) / "compare"
        form = CompareForm(prompt, tuple(styles or ()), seeds, steps, cfg, width, height, scheduler, loss,
                           loss_arg, loss_scale, loss_every, loss_decoder)
        try:
            exp = compare_experiment(self.model, self.catalog, form, uploads, self.folder(request))
            use_concepts(self.model, [])  # the runner loads the experiment's own styles
        except Exception as err:
            raise page_error(err) from None
        total = len(exp.styles) * len(exp.kinds)
        written: list[Path] = []

        def on_cell(path: Path) -> None:
            if path.suffix == ".png" and path.parent == folder / exp.name and path.name != "grid.png":
                written.append(path)
            self.on_written(path)

        stop = self.switch.begin(session_of(request))
        try:   # the step callback raises Stopped after the step in flight when Stop was pressed
            for kind, value in stream(lambda cb: run_compare(self.model, exp, folder, on_cell, cb), stop):
                if kind == "step":
                    yield gr.skip(), gr.skip(), gr.skip(), \
                        f"{len(written)} of {total} cells written (step {value.i + 1} of {exp.steps})"
                elif kind == "stopping":
                    yield gr.skip(), gr.skip(), gr.skip(), \
                        f"Stopping after this step… ({len(written)} of {total} cells written)"
                elif kind == "stopped":
                    yield gr.skip(), gr.skip(), gr.skip(), "**Stopped**; Compare again resumes where it stopped."
                    return
                else:
                    zipped = zip_export(value, folder / f"{exp.name}-blog.zip")
                    yield (str(value.grid), labelled_cells(value), str(zipped),
                           f"Done: {total} cells, grid and blog export in {value.folder.name}/")
        except Exception as err:
            raise page_error(err) from None

    # --- PNG info tab -----------------------------------------------------------------------------------
    @staticmethod
    def png_read(path):
        """A dropped image: its A1111 parameters and its sd-styles recipe."""
        from .app_pnginfo import png_info

        if not path:
            return "", None, ""
        try:
            parameters, doc = png_info(path)
        except Exception as err:
            raise page_error(err) from None
        note = "" if doc else "No sd-styles recipe in this image; Send to Generate uses its A1111 parameters."
        return parameters, doc, note

    def png_form(self, path) -> tuple[GenerateForm, list[str]]:
        """Generate-tab values from a dropped image: its recipe, else its A1111 parameters."""
        from .app_pnginfo import form_from_parameters, form_from_recipe, png_info
        from .recipe import Recipe

        parameters, doc = png_info(path)
        if doc is not None:
            return form_from_recipe(Recipe.from_dict(doc["recipe"]), self.catalog)
        if parameters:
            return form_from_parameters(parameters), []
        raise BadInput("this image carries no generation parameters")

    def png_rerender(self, path, request: gr.Request):
        """Re-render the dropped image's recipe with the loaded model, and compare with the original."""
        from .app_pnginfo import check_rerunnable, rerender
        from .metadata import read_recipe

        if not path:
            raise gr.Error("drop a PNG first", print_exception=False)
        try:
            recipe = check_rerunnable(read_recipe(path), self.out)
            out, message = rerender(self.model, recipe, self.folder(request), original=path)
        except Exception as err:
            raise page_error(err) from None
        self.on_written(out)
        return str(out), message
