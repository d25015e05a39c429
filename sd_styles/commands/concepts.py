"""`sd-styles concepts inspect SRC`: format, token(s), vector count and width of a concept, as JSON."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("concepts", help="textual-inversion concepts (hub ids, files, folders)")
    # the nested parser uses the same class as ours: a usage error stays one line with exit code 2
    actions = p.add_subparsers(dest="concepts_command", metavar="ACTION", required=True, parser_class=type(p))
    inspect = actions.add_parser("inspect", help="print a concept's format, token(s), vectors and width as JSON")
    inspect.add_argument("source", metavar="SRC",
                         help="hub id (sd-concepts-library/NAME), .bin/.pt/.safetensors/.png file, or folder")
    inspect.add_argument("--token", help="the trigger token to report instead of the file's own")
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from .. import hub

    hub.preflight(concepts=[args.source])  # an uncached hub concept fails in seconds, before torch loads
    from ..concepts import read_concept

    json.dump(read_concept(args.source, token=args.token).describe(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0
