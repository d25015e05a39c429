"""The Gradio app: Generate, Compare styles and PNG info tabs, and the API endpoint `/generate`.

    from sd_styles.app import AppConfig, build_app, launch
    model = sd_styles.load_model("tiny")
    launch(build_app(model, out="outputs"), AppConfig(out="outputs"))

Safe by default: it binds 127.0.0.1, never opens a share link unless asked (Colab would), caps upload
sizes, serves only the output folder, runs one job at a time and sends no analytics. Gallery and
downloads serve the PNG files we wrote, so their metadata survives (Gradio's own encoding is WebP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .app_actions import MAX_BATCH, NO_LOSS, UPLOAD_SUFFIXES

MAX_FILE_SIZE = "20mb"   # uploads: embeddings are KBs, a 1024x1024 PNG a few MB

# Ctrl+Enter (Cmd+Enter) in a prompt box runs Generate, as in AUTOMATIC1111.
CTRL_ENTER_JS = """() => {
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !(e.ctrlKey || e.metaKey)) return;
    if (!e.target.closest || !e.target.closest("#prompt, #negative")) return;
    e.preventDefault();
    document.getElementById("generate-btn")?.click();
  });
}"""


@dataclass(frozen=True)
class AppConfig:
    """How the app is served."""

    out: str | Path = "outputs"        # per-session folders go to OUT/sessions/<id>/; the only folder served
    host: str = "127.0.0.1"            # loopback only unless told otherwise
    port: int | None = 7860            # None: the first free port from 7860
    share: bool = False                # a public gradio.live link: opt-in only
    max_file_size: str | int = MAX_FILE_SIZE


def _settings_column(gr, model, h):
    """Generate tab settings; returns the components by form field name (plus the UI-only ones)."""
    from .losses import BUILTIN_LOSSES
    from .schedulers import SCHEDULERS

    width, height = model.native_size
    c: dict = {}
    c["styles"] = gr.Dropdown([s.name for s in h.catalog], value=[], multiselect=True,
                              label="Styles (concepts/catalog.toml): write each one's token in the prompt")
    c["hub_concepts"] = gr.Textbox("", label="More concepts: hub ids", placeholder="sd-concepts-library/NAME, ...")
    with gr.Row():
        c["uploads"] = gr.File(label="Embedding files", file_count="multiple", file_types=list(UPLOAD_SUFFIXES),
                               elem_id="uploads")
        c["upload_token"] = gr.Textbox("", label="Token for the one uploaded file (optional)")
    with gr.Row(equal_height=True):
        c["seed"] = gr.Number(-1, precision=0, label="Seed (-1: random; image i uses seed + i)", scale=4,
                              elem_id="seed")
        c["dice"] = gr.Button("🎲", scale=0, min_width=48, elem_id="seed-random")
        c["recycle"] = gr.Button("♻️", scale=0, min_width=48, elem_id="seed-reuse")
        c["batch_count"] = gr.Number(1, precision=0, label=f"Batch count (1-{MAX_BATCH})", scale=2)
    with gr.Row():
        c["steps"] = gr.Number(20, precision=0, label="Steps (1-1000)", elem_id="steps")
        c["cfg"] = gr.Slider(0, 30, value=7.5, step=0.5, label="CFG scale")
    with gr.Row():
        c["width"] = gr.Slider(64, 2048, value=width, step=8, label="Width")
        c["height"] = gr.Slider(64, 2048, value=height, step=8, label="Height")
    c["scheduler"] = gr.Dropdown(list(SCHEDULERS), value="lms", label="Scheduler")
    with gr.Accordion("Loss guidance", open=False):
        with gr.Row():
            c["loss"] = gr.Dropdown([NO_LOSS, *BUILTIN_LOSSES], value=NO_LOSS, label="Loss")
            c["loss_arg"] = gr.Textbox("", label="Argument (color: #rrggbb; clip: a text)")
            c["loss_scale"] = gr.Number(None, label="Scale (empty: the loss's default)")
        with gr.Row():
            c["loss_every"] = gr.Number(1, precision=0, label="Every K-th step")
            c["loss_start"] = gr.Slider(0, 1, value=0, step=0.05, label="Start (fraction)")
            c["loss_end"] = gr.Slider(0, 1, value=1, step=0.05, label="End (fraction)")
            c["loss_decoder"] = gr.Radio(["vae", "tiny", "linear"], value="vae", label="Decoder for the loss")
    c["show_preview"] = gr.Checkbox(False, label="Live x0 preview (a cheap latent-to-RGB map)")
    return c


API_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "cfg", "width", "height", "scheduler", "styles",
              "hub_concepts", "loss", "loss_arg", "loss_scale", "loss_every", "loss_start", "loss_end",
              "loss_decoder")
UI_FIELDS = ("prompt", "negative_prompt", "seed", "batch_count", "steps", "cfg", "width", "height", "scheduler",
             "styles", "hub_concepts", "loss", "loss_arg", "loss_scale", "loss_every", "loss_start", "loss_end",
             "loss_decoder", "uploads", "upload_token", "show_preview")


def _generate_tab(gr, model, h) -> dict:
    """Prompt, buttons, settings, progress, gallery; its events and the /generate API endpoint."""
    with gr.Row():
        with gr.Column(scale=4):
            prompt = gr.Textbox("", lines=2, label="Prompt", placeholder="Ctrl+Enter generates", elem_id="prompt")
            negative = gr.Textbox("", lines=1, label="Negative prompt", elem_id="negative")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
    with gr.Row():
        with gr.Column():
            c = _settings_column(gr, model, h)
        with gr.Column():
            status = gr.Markdown("", elem_id="status")
            preview = gr.Image(label="Preview (x0)", interactive=False, format="png", height=160)
            gallery = gr.Gallery(label="Images", elem_id="gallery", columns=2, format="png", interactive=False)
            files = gr.File(label="PNG files (with their recipes)", file_count="multiple", interactive=False,
                            elem_id="files")
    c.update(prompt=prompt, negative_prompt=negative)
    paths, selected = gr.State([]), gr.State(None)
    event = generate.click(h.generate, [c[k] for k in UI_FIELDS], [gallery, preview, status, files, paths],
                           api_name="ui_generate", api_visibility="private", concurrency_id="gpu")
    event.then(lambda p: p[-1] if p else None, paths, selected, queue=False, api_visibility="private")
    stop.click(h.stop, None, None, queue=False, api_visibility="private")  # the job reports it: stream()
    c["dice"].click(lambda: -1, None, c["seed"], queue=False, api_visibility="private")
    c["recycle"].click(h.reuse_seed, selected, c["seed"], queue=False, api_visibility="private")
    gallery.select(h.select, paths, selected, queue=False, api_visibility="private")
    c["loss"].change(h.default_scale, c["loss"], c["loss_scale"], queue=False, api_visibility="private")
    # The API endpoint: one image, returned as its PNG file (other parameters keep these defaults).
    api_out = gr.File(visible=False)
    api_trigger = gr.Button(visible=False)
    api_trigger.click(h.api_generate, [c[k] for k in API_FIELDS], api_out, api_name="generate",
                      concurrency_id="gpu")
    return c


def _compare_tab(gr, model, h) -> None:
    """The five-style comparison form, grid, labelled cells and blog zip."""
    from .losses import BUILTIN_LOSSES
    from .schedulers import SCHEDULERS

    d = _compare_defaults(h.catalog)
    width, height = model.native_size
    gr.Markdown("Every style with its own seed, plain and (with a loss) guided with the same seed: what "
                "`sd-styles run` makes. Stop acts within the step in flight; Compare again resumes.")
    with gr.Row():
        prompt = gr.Textbox(d["prompt"], label="Prompt ({style} becomes each style's token)", scale=3)
        run = gr.Button("Compare", variant="primary", scale=1, elem_id="compare-btn")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="compare-stop-btn")
    with gr.Row():
        styles = gr.Dropdown([s.name for s in h.catalog], value=d["styles"], multiselect=True, label="Styles")
        uploads = gr.File(label="More styles: embedding files", file_count="multiple", file_types=list(UPLOAD_SUFFIXES))
        seeds = gr.Textbox(d["seeds"], label="Seeds, one per style (catalog styles, then uploads)")
    with gr.Row():
        steps = gr.Number(d["steps"], precision=0, label="Steps (1-1000)")
        cfg = gr.Slider(0, 30, value=d["cfg"], step=0.5, label="CFG scale")
        cwidth = gr.Slider(64, 2048, value=width, step=8, label="Width")
        cheight = gr.Slider(64, 2048, value=height, step=8, label="Height")
        scheduler = gr.Dropdown(list(SCHEDULERS), value=d["scheduler"], label="Scheduler")
    with gr.Row():
        loss = gr.Dropdown([NO_LOSS, *BUILTIN_LOSSES], value=d["loss"], label="Loss (guided row)")
        loss_arg = gr.Textbox("", label="Argument")
        loss_scale = gr.Number(d["scale"], label="Scale")
        loss_every = gr.Number(d["every"], precision=0, label="Every K-th step")
        decoder = gr.Radio(["vae", "tiny", "linear"], value="vae", label="Decoder")
    status = gr.Markdown("", elem_id="compare-status")
    grid = gr.Image(label="Grid", type="filepath", format="png", interactive=False, elem_id="compare-grid")
    cells = gr.Gallery(label="Cells", columns=5, format="png", interactive=False)
    export = gr.File(label="Blog export (zip)", interactive=False, elem_id="compare-zip")
    run.click(h.compare, [prompt, styles, seeds, steps, cfg, cwidth, cheight, scheduler, loss, loss_arg, loss_scale,
                          loss_every, decoder, uploads], [grid, cells, export, status],
              api_visibility="private", concurrency_id="gpu")
    stop.click(h.stop, None, None, queue=False, api_visibility="private")  # the job reports it: stream()
    loss.change(h.default_scale, loss, loss_scale, queue=False, api_visibility="private")


def _compare_defaults(catalog) -> dict:
    """The Compare tab starts as concepts/five_styles.toml: prompt, the default styles, their seeds, the loss."""
    from .catalog import CATALOG_PATH
    from .experiment import load_experiment

    d = {"prompt": "a mouse wearing a top hat in the style of {style}", "steps": 50, "cfg": 7.5,
         "scheduler": "lms", "loss": NO_LOSS, "scale": None, "every": 1,
         "styles": [s.name for s in catalog if s.default], "seeds": ""}
    try:
        exp = load_experiment(CATALOG_PATH.parent / "five_styles.toml")
    except Exception:  # a wheel without the concepts/ folder: keep the built-in defaults
        return d
    d.update(prompt=exp.prompt, steps=exp.steps, cfg=exp.guidance_scale, scheduler=exp.scheduler,
             seeds=", ".join(str(s.seed) for s in exp.styles))
    if exp.guidance is not None and exp.guidance.losses:
        d.update(loss=exp.guidance.losses[0].name, scale=exp.guidance.losses[0].scale, every=exp.guidance.every)
    return d


def _pnginfo_tab(gr, h, c: dict, tabs) -> None:
    """Drop a PNG: parameters and recipe; Send to Generate fills the form `c`; Re-render."""
    from dataclasses import astuple

    from .app_actions import FORM_FIELDS

    with gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", sources=["upload"], label="Drop a PNG", elem_id="png-in")
            with gr.Row():
                send = gr.Button("Send to Generate", elem_id="png-send")
                rerender = gr.Button("Re-render", variant="primary", elem_id="png-rerender")
            status = gr.Markdown("", elem_id="png-status")
        with gr.Column():
            parameters = gr.Textbox(label="Parameters (A1111)", lines=5, interactive=False, elem_id="png-parameters")
            recipe = gr.JSON(label="sd-styles recipe")
            result = gr.Image(label="Re-rendered", type="filepath", format="png", interactive=False)
    image.change(h.png_read, image, [parameters, recipe, status], api_visibility="private")

    def to_form(path):
        """Send to Generate: fill the form, switch tabs."""
        from .app_events import page_error

        if not path:
            raise gr.Error("drop a PNG first", print_exception=False)
        try:
            form, notes = h.png_form(path)
        except Exception as err:
            raise page_error(err) from None
        values = list(astuple(form))
        values[FORM_FIELDS.index("styles")] = list(form.styles)
        return [*values, gr.Tabs(selected="generate"), " ".join(notes) or "Sent to Generate."]

    send.click(to_form, image, [*(c[k] for k in FORM_FIELDS), tabs, status], api_visibility="private")
    rerender.click(h.png_rerender, image, [result, status], api_visibility="private", concurrency_id="gpu")


def build_app(model, *, out: str | Path = "outputs", catalog=None,
              on_written: Callable[[Path], None] | None = None):
    """The Blocks of the app for a loaded model; outputs go to OUT/sessions/<session>/."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .app_events import Handlers
    from .catalog import load_catalog

    h = Handlers(model, Path(out), catalog if catalog is not None else load_catalog(), on_written)
    with gr.Blocks(title="sd-styles", analytics_enabled=False) as demo:
        gr.Markdown(f"## sd-styles · model `{model.source}`")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                c = _generate_tab(gr, model, h)
            with gr.Tab("Compare styles", id="compare"):
                _compare_tab(gr, model, h)
            with gr.Tab("PNG info", id="pnginfo"):
                _pnginfo_tab(gr, h, c, tabs)
    demo.queue(default_concurrency_limit=1, max_size=64)  # one GPU job at a time
    return demo


def launch(demo, config: AppConfig = AppConfig(), **options):
    """Serve `demo` with the safe settings of `config` (options pass through, e.g. prevent_thread_lock)."""
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return demo.launch(server_name=config.host, server_port=config.port, share=bool(config.share),
                       max_file_size=config.max_file_size, allowed_paths=[str(out)], show_error=False,
                       enable_monitoring=False, mcp_server=False, ssr_mode=False, pwa=False,
                       js=CTRL_ENTER_JS, **options)
