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


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """An error's text on one line, cut only at a sentence or word end (never mid-word)."""
    text = " ".join(str(err).split()) or (type(err).__name__ if isinstance(err, BaseException) else "")
    if len(text) <= limit:
        return text
    head = text[:limit]
    stop = head.rfind(". ")
    if stop >= limit // 3:  # a whole sentence fits: end there
        return head[:stop + 1]
    return head[:head.rfind(" ")].rstrip(",;:") + " ..." if " " in head else head + " ..."
