"""Small helpers shared by tests (import as `from helpers import ...`)."""

from __future__ import annotations

import numpy as np


def pixel_diff(a, b) -> int:
    """Largest per-channel difference between two PIL images, in 1/255 units."""
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
