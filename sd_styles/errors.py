"""Error types that map to the command line's exit codes (2: bad input, 1: runtime failure)."""

from __future__ import annotations


class SdStylesError(Exception):
    """Base class of the errors this package raises on purpose."""

    exit_code = 1


class BadInput(SdStylesError, ValueError):
    """The user asked for something that cannot work: one line saying what is wrong and what is allowed."""

    exit_code = 2


class RuntimeFailure(SdStylesError, RuntimeError):
    """Valid input, but the work failed (out of memory, a broken download...)."""

    exit_code = 1
