"""Helpers for the app tests: start the app on a free loopback port, write tiny embeddings and evil pickles."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(out: Path, model=None):
    """(url, demo, model): the app on the tiny model, launched in this process's threads (loopback default)."""
    from sd_styles.app import AppConfig, build_app, launch
    from sd_styles.models import load_model

    model = model or load_model("tiny", device="cpu", dtype="fp32")  # its own model: the app swaps concepts
    demo = build_app(model, out=out)
    port = free_port()
    launch(demo, AppConfig(out=out, port=port), prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}", demo, model


def tiny_embedding(path: Path, token: str, seed: int = 0) -> Path:
    """A 32-wide sd-concepts style embedding {token: vector} for the tiny model's text encoder."""
    gen = torch.Generator().manual_seed(seed)
    torch.save({token: torch.randn(32, generator=gen) * 0.5}, path)
    return path


class Evil:
    """Pickles to a call of `fn(*args)`: what a crafted embedding would run on load."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def evil_pickle(path: Path, marker: Path) -> Path:
    """A .pt whose pickle calls os.system to create `marker` (it must never appear)."""
    torch.save({"<x>": torch.zeros(32), "payload": Evil(os.system, (f"touch {marker}",))}, path)
    return path


def raw_evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"<x>": Evil(os.system, (f"touch {marker}",))}, protocol=2))
    return path
