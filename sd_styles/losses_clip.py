"""The `clip=TEXT` loss: CLIP image-text distance on decoded images, differentiable end to end.

Kept apart from the other losses because it is the one that loads a model (cached per StyleModel by
`losses.model_loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from . import hub
from .errors import BadInput, one_line
from .hub import CLIP_FIX, DEFAULT_CLIP, is_hub_id

Loss = Callable[[torch.Tensor], torch.Tensor]

def load_clip(model_id: str | None = None) -> tuple[Any, Any]:
    """(CLIPModel in eval mode, CLIPProcessor) from a hub id or a local folder; one-line BadInput when unavailable."""
    from transformers import CLIPModel, CLIPProcessor

    model_id = model_id or DEFAULT_CLIP
    local = Path(model_id).expanduser()
    if not local.is_dir() and not is_hub_id(model_id):
        raise BadInput(f"clip loss: no such folder {model_id!r}; give a hub id (org/name) or a local CLIPModel folder")
    cache_only = not local.is_dir() and hub.require_cached("clip loss: CLIP model", model_id, "config.json", CLIP_FIX)
    try:
        model = CLIPModel.from_pretrained(model_id, local_files_only=cache_only).eval().requires_grad_(False)
        processor = CLIPProcessor.from_pretrained(model_id, local_files_only=cache_only)
    except (OSError, ValueError) as err:
        raise BadInput(f"clip loss: cannot load CLIP model {model_id!r} ({one_line(err)}). It may not be fully "
                       f"cached and the hub may be unreachable: {CLIP_FIX}") from err
    return model, processor


def clip_loss(prompt: str, model_id: str | None = None, components: tuple[Any, Any] | None = None) -> Loss:
    """Factory: spherical distance 2 arcsin(|u - v| / 2)^2 between CLIP image and text embeddings.

    `model_id` is a hub id or a local folder holding a `CLIPModel` and its `CLIPProcessor` (default
    DEFAULT_CLIP); `components` passes an already loaded (model, processor) pair instead (see `model_loss`).
    Preprocessing is done in torch (resize the short side, centre crop, normalise) so it is differentiable.
    """
    if not prompt.strip():
        raise BadInput("clip loss: the text is empty; use clip=TEXT")
    model, processor = components if components is not None else load_clip(model_id)
    ip = processor.image_processor
    side = _crop_side(getattr(ip, "crop_size", None) or ip.size)
    tokens = processor.tokenizer([prompt], padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        text = _unit(_features(model.get_text_features(input_ids=tokens.input_ids.to(model.device))))

    def clip(images: torch.Tensor) -> torch.Tensor:
        """2 arcsin(|u_image - u_text| / 2)^2, averaged over images."""
        if model.device != images.device:
            model.to(images.device)
        pixels = _clip_pixels(images.float(), side, ip.image_mean, ip.image_std)
        u = _unit(_features(model.get_image_features(pixel_values=pixels.to(model.dtype)))).float()
        v = text.to(u.device, u.dtype)
        return (2 * ((u - v).norm(dim=-1) / 2).clamp(max=1).arcsin().square()).mean()

    return clip


def _crop_side(crop: Any) -> tuple[int, int]:
    # transformers 5.x: a SizeDict with attributes; 4.x: a plain dict; very old configs: an int
    if isinstance(crop, int):
        return crop, crop
    get = crop.get if hasattr(crop, "get") else (lambda k: getattr(crop, k, None))
    h, w = get("height"), get("width")
    edge = get("shortest_edge")
    return (int(h), int(w)) if h and w else (int(edge), int(edge))


def _features(out: Any) -> torch.Tensor:
    # transformers < 5 returns the projected features; 5.x returns an output whose pooler_output holds them
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _clip_pixels(images: torch.Tensor, side: tuple[int, int], mean, std) -> torch.Tensor:
    """CLIPImageProcessor's resize-short-side + centre-crop + normalise, as differentiable torch ops."""
    h, w = images.shape[-2:]
    s = max(side[0] / h, side[1] / w)
    size = (max(side[0], round(h * s)), max(side[1], round(w * s)))
    x = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (size[0] - side[0]) // 2, (size[1] - side[1]) // 2
    x = x[..., top:top + side[0], left:left + side[1]]
    return (x - _channels(mean, x)) / _channels(std, x)


def _channels(values, like: torch.Tensor) -> torch.Tensor:
    """A (1, 3, 1, 1) per-channel constant on the images' device and dtype."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
