"""Five built-in *random* demo styles for the tiny model: `demo:random-1` ... `demo:random-5`.

They are not art: each is one random 32-wide vector (the tiny model's text-encoder width), made in code
from a fixed seed, so the main job (`sd-styles run concepts/tiny_demo.toml`) runs end to end offline,
in seconds, on a fresh clone. They load through the same parser as every concept file (safetensors
bytes in the sd-concepts layout `{token: vector}`), so their sha256 is stable across runs and machines.
"""

from __future__ import annotations

from .errors import BadInput

DEMO_PREFIX = "demo:"
DEMO_NAMES = tuple(f"random-{i}" for i in range(1, 6))


def demo_token(name: str) -> str:
    """`random-1` -> `<random-demo-1>`: the trigger token stored in the demo file."""
    return f"<{name.replace('random-', 'random-demo-')}>"


def demo_embedding(source: str) -> tuple[str, bytes]:
    """`demo:random-N` -> (name, safetensors bytes of `{token: (32,) float32}`), the same on every machine."""
    import torch
    from safetensors.torch import save

    from .tiny import TINY_TEXT_WIDTH  # the demo styles fit the tiny model's text encoder

    name = source[len(DEMO_PREFIX):]
    if name not in DEMO_NAMES:
        raise BadInput(f"concept {source}: no such built-in demo style; allowed: "
                       f"{', '.join(DEMO_PREFIX + n for n in DEMO_NAMES)}")
    seed = 1000 + DEMO_NAMES.index(name)
    vector = torch.randn(TINY_TEXT_WIDTH, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    return name, save({demo_token(name): vector.contiguous()})


def demo_sources() -> list[str]:
    """All five demo sources, in order."""
    return [DEMO_PREFIX + n for n in DEMO_NAMES]
