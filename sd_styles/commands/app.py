"""`sd-styles app`: the Gradio app (Generate, Compare styles, PNG info) with the API endpoint /generate."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_options, print_paths


def port(text: str) -> int:
    """A TCP port number, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 1 to 65535, got {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser("app", help="the Gradio app in the browser (API endpoint /generate)")
    add_model_options(p, default_model="CompVis/stable-diffusion-v1-4")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=port, default=7860, help="default 7860")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--out", default="outputs", help="output folder; each session writes to OUT/sessions/<id>/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve it until Ctrl+C."""
    import importlib.util

    from ..errors import BadInput

    if importlib.util.find_spec("gradio") is None:
        raise BadInput("the app needs Gradio: pip install 'sd-styles[app]'")
    from ..app import AppConfig, build_app, launch
    from ..models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    config = AppConfig(out=args.out, host=args.host, port=args.port, share=args.share)
    demo = build_app(model, out=config.out, on_written=lambda path: print_paths([path]))
    sys.stderr.write(f"sd-styles app: http://{args.host}:{args.port} (Ctrl+C stops it)\n")
    launch(demo, config, quiet=True)  # blocks until Ctrl+C; stdout keeps carrying only written paths
    return 0
