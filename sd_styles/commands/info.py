"""`sd-styles info IMAGE`: the recipe stored in an image, as JSON on stdout."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("info", help="print the recipe stored in an image as JSON")
    p.add_argument("image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..metadata import read_document

    json.dump(read_document(args.image), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
