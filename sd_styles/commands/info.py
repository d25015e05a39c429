"""`sd-styles info IMAGE...`: the recipe stored in images, as JSON on stdout.

One image: the document, indented. Several: JSON lines, one compact document per image with its `file`.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("info", help="print the recipe stored in one or more images as JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="PNG written by sd-styles; with several, one JSON document per line (JSON lines)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..metadata import read_document

    if len(args.images) == 1:
        json.dump(read_document(args.images[0]), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    docs = [(path, read_document(path)) for path in args.images]  # all read first: a bad file prints nothing
    for path, doc in docs:
        sys.stdout.write(json.dumps({"file": path, **doc}, sort_keys=True) + "\n")
    return 0
