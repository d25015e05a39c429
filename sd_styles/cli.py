"""`sd-styles` command line: stdout carries only written paths; exit 0 ok, 2 bad input, 1 runtime failure."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

# Each sub-command lives in sd_styles/commands/<name>.py with `register(subparsers)`; its parser sets `func`.
COMMANDS = ("generate", "info", "rerun", "concepts", "run", "app", "train", "evaluate")


# Warnings known to be harmless for our use, silenced unless --debug; every other warning still shows.
HARMLESS_WARNINGS = (
    # diffusers' schedulers build numpy arrays from tensors with torch's old __array__ signature (numpy 2)
    (DeprecationWarning, r"__array__ implementation doesn't accept a copy keyword"),
    # transformers' CLIP image processors without torchvision fall back to the PIL backend (same numbers)
    (UserWarning, r".*requires torchvision"),
)


class _HelpFormatter(argparse.HelpFormatter):
    """Help lines end with the default, where there is one worth showing."""

    def _get_help_string(self, action):  # argparse's documented extension point
        text = action.help or ""
        if (action.default not in (None, False, [], "", argparse.SUPPRESS) and "%(default)" not in text
                and "default" not in text and action.option_strings):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2; help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sd-styles", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and library warnings (accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"sd_styles.commands.{name}").register(sub)
    return parser


def _quiet_libraries() -> None:
    """Library chatter (hub warnings, weight-loading bars) would bury our one-line messages."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("transformers", "diffusers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug anywhere (errors say "run with --debug"); after a bare `--` it is a positional value
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut]
    argv = [a for a in argv[:cut] if a != "--debug"] + argv[cut:]
    if not debug:
        _quiet_libraries()
    args = build_parser().parse_args(argv)
    from .errors import SdStylesError, one_line  # after parsing: --help stays instant

    try:
        return int(args.func(args) or 0)
    except SdStylesError as err:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"sd-styles: error: {one_line(err, limit=2000)}\n")
        return err.exit_code
    except BrokenPipeError:  # e.g. `sd-styles info X | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("sd-styles: interrupted\n")
        return 130
    except Exception as err:  # a runtime failure: a clear line, the traceback only with --debug
        if debug:
            traceback.print_exc()
        else:
            sys.stderr.write(f"sd-styles: failed: {type(err).__name__}: {one_line(err)}"
                             " (run with --debug for the traceback)\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
