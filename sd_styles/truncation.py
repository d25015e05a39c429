"""Prompts longer than the text encoder's window: CLIP reads 77 tokens, the rest is cut. Say so, and record it."""

from __future__ import annotations

import logging

from .errors import one_line

log = logging.getLogger(__name__)


def overflow(model, text: str) -> dict | None:
    """{tokens, limit, dropped} when `text` (concept tokens expanded) exceeds the tokenizer's window, else None."""
    tokenizer = getattr(model.pipe, "tokenizer", None)
    if not text or tokenizer is None:  # an SDXL refiner alone has no first tokenizer
        return None
    # diffusers' own expansion of multi-vector concept tokens, as the loop encodes the prompt
    ids = tokenizer(model.pipe.maybe_convert_prompt(text, tokenizer), truncation=False).input_ids
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return None
    dropped = tokenizer.decode(ids[limit - 1:-1], skip_special_tokens=True).strip()
    return {"tokens": len(ids), "limit": limit, "dropped": dropped}


def check_prompt_length(model, recipe) -> dict | None:
    """Warn (one line per prompt) when a prompt is cut; returns the metadata note, or None when nothing is cut."""
    cut = {}
    for field in ("prompt", "negative_prompt"):
        info = overflow(model, getattr(recipe, field))
        if info is not None:
            cut[field] = info
            log.warning("warning: the %s is %d tokens, the text encoder reads %d; ignored: %r",
                        field.replace("_", " "), info["tokens"], info["limit"], one_line(info["dropped"], 120))
    return {"truncated": cut} if cut else None
