"""Creative losses: small functions `loss(images) -> scalar` on (N, 3, H, W) images in [0, 1].

Each built-in has a default scale tuned for the full VAE at the model's native size (the classic blue
loss used 200). Names on the command line and in experiment files: `NAME`, `NAME=ARG` for the
parameterised ones (`color=#ff8800`, `canny=ref.png`, `clip=a watercolor painting`), or an importable
`module:function`; a negative scale pushes the other way (`saturation:-200` desaturates).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor

from .errors import BadInput
from .losses_clip import DEFAULT_CLIP, clip_loss, load_clip
from .recipe import Guidance, LossTerm

Loss = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_SCALE = 100.0                       # user losses (module:function) without an explicit scale
DEFAULT_COLOR = (0.15, 0.55, 0.55)          # `color` alone: a teal cast, far from blue and warm
SEPIA_TINT = (1.25, 0.95, 0.60)             # Rec.601 luminance of the tint is 1.0: sepia keeps brightness
_LUMA = (0.299, 0.587, 0.114)               # Rec.601 weights


def _rgb(values, like: torch.Tensor) -> torch.Tensor:
    """A (1, 3, 1, 1) constant on the images' device and dtype, for broadcasting."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Y = 0.299 R + 0.587 G + 0.114 B, shape (N, 1, H, W)."""
    return (images * _rgb(_LUMA, images)).sum(1, keepdim=True)


def blue_loss(images: torch.Tensor) -> torch.Tensor:
    """The classic: mean |B - 0.9|, pulling the blue channel toward 0.9."""
    return (images[:, 2] - 0.9).abs().mean()


def color_loss(rgb: tuple[float, float, float] | str = DEFAULT_COLOR) -> Loss:
    """Factory: mean |x - rgb| over all pixels and channels; rgb in [0, 1] or a CSS colour ("#ff8800", "orange")."""
    target = parse_color(rgb) if isinstance(rgb, str) else tuple(float(v) for v in rgb)
    if len(target) != 3 or not all(0.0 <= v <= 1.0 for v in target):
        raise BadInput(f"color loss: expected three values in [0, 1], got {rgb!r}")

    def color(images: torch.Tensor) -> torch.Tensor:
        """mean |x - target colour|."""
        return (images - _rgb(target, images)).abs().mean()

    return color


def parse_color(text: str) -> tuple[float, float, float]:
    """CSS colour ("#ff8800", "orange", "rgb(255,136,0)") or "r,g,b" in [0, 1] -> floats in [0, 1]."""
    try:
        if "," in text and not text.strip().lower().startswith(("rgb", "hsl", "hsv")):
            values = tuple(float(v) for v in text.split(","))
            if len(values) == 3:
                return values  # type: ignore[return-value]
            raise ValueError(text)
        return tuple(v / 255 for v in ImageColor.getrgb(text.strip())[:3])  # type: ignore[return-value]
    except ValueError:
        raise BadInput(f"color loss: cannot read colour {text!r}; use #rrggbb, a CSS name, "
                       "or r,g,b in [0, 1]") from None


def warm_loss(images: torch.Tensor) -> torch.Tensor:
    """Warm white balance: mean |(R - B) - 0.25|, red a quarter above blue in every pixel."""
    return ((images[:, 0] - images[:, 2]) - 0.25).abs().mean()


def sepia_loss(images: torch.Tensor) -> torch.Tensor:
    """Sepia toning: mean |x - min(Y * tint, 1)|, colours toward the tinted grey of the same luminance."""
    target = (luminance(images) * _rgb(SEPIA_TINT, images)).clamp(max=1.0)
    return (images - target).abs().mean()


def saturation_loss(images: torch.Tensor) -> torch.Tensor:
    """More colour: 1 - mean chroma, chroma = max(R, G, B) - min(R, G, B) (HSV's C)."""
    return 1.0 - (images.amax(1) - images.amin(1)).mean()


def contrast_loss(images: torch.Tensor) -> torch.Tensor:
    """More contrast: 0.5 - std(Y) per image (0.5 is the largest std of values in [0, 1]), averaged."""
    return (0.5 - luminance(images).flatten(1).std(dim=1)).mean()


def symmetry_loss(images: torch.Tensor) -> torch.Tensor:
    """Left-right mirror symmetry: mean |x - flip_W(x)|."""
    return (images - images.flip(-1)).abs().mean()


def soft_edges(images: torch.Tensor, low: float = 0.1, high: float = 0.2, width: float = 0.03) -> torch.Tensor:
    """Differentiable Canny: Gaussian blur, Sobel magnitude, sigmoid double threshold with soft hysteresis.

    A weak edge (sigmoid((m - low) / width)) counts where a strong one (threshold `high`) is within
    one pixel (3x3 max-pool), as Canny's hysteresis does; no binary map, so gradients flow everywhere.
    Returns (N, 1, H, W) in [0, 1]; magnitudes are normalised so a unit step edge gives m = 1.
    """
    gray = luminance(images)
    blur = torch.tensor([1.0, 2.0, 1.0], dtype=gray.dtype, device=gray.device)
    blur = (blur[:, None] * blur[None, :] / 16).view(1, 1, 3, 3)
    gray = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), blur)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=gray.dtype,
                           device=gray.device) / 4
    kernels = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)         # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = (g.square().sum(1, keepdim=True) + 1e-8).sqrt()         # eps: sqrt is not differentiable at 0
    strong = torch.sigmoid((magnitude - high) / width)
    weak = torch.sigmoid((magnitude - low) / width)
    near_strong = F.max_pool2d(strong, 3, stride=1, padding=1)
    return strong + (1 - strong) * weak * near_strong


def canny_edges_loss(images: torch.Tensor) -> torch.Tensor:
    """Bold line-art edges: 1 - mean soft Canny edge map."""
    return 1.0 - soft_edges(images).mean()


def canny_loss(reference: Image.Image | torch.Tensor | str | Path | None = None) -> Loss:
    """Factory: no reference -> `canny_edges_loss`; else mean |edges(x) - edges(reference)|.

    The reference (PIL image, file path, or (3, H, W) / (1, 3, H, W) tensor in [0, 1]) is resized
    to the images' size; its edge map is computed once per size.
    """
    if reference is None:
        return canny_edges_loss
    ref = _image_tensor(reference)
    cache: dict[tuple, torch.Tensor] = {}

    def canny(images: torch.Tensor) -> torch.Tensor:
        """mean |soft_edges(x) - soft_edges(reference)|."""
        key = (tuple(images.shape[-2:]), images.device, images.dtype)
        if key not in cache:
            r = F.interpolate(ref.to(images.device, images.dtype), size=key[0], mode="bilinear", antialias=True)
            cache[key] = soft_edges(r).detach()
        return (soft_edges(images) - cache[key]).abs().mean()

    return canny


def _image_tensor(source: Image.Image | torch.Tensor | str | Path) -> torch.Tensor:
    """A reference image as a (1, 3, H, W) float tensor in [0, 1]."""
    if isinstance(source, torch.Tensor):
        t = source.detach().float()
        return (t if t.ndim == 4 else t.unsqueeze(0))[:, :3]
    if isinstance(source, (str, Path)):
        try:
            source = Image.open(source)
            source.load()
        except (OSError, ValueError) as err:
            raise BadInput(f"canny loss: cannot read reference image {str(source)!r} ({err})") from None
    arr = np.asarray(source.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


@dataclass(frozen=True)
class BuiltinLoss:
    """A registry entry: the loss without argument (if any), the `NAME=ARG` factory (if any), the default scale."""

    fn: Loss | None
    factory: Callable[[str], Loss] | None
    default_scale: float
    arg: str = ""                  # what ARG is, for messages


# name -> entry. Default scales: per-pixel gradients comparable to blue at 200 (means over 3 channels get more).
BUILTIN_LOSSES: dict[str, BuiltinLoss] = {
    "blue": BuiltinLoss(blue_loss, None, 200.0),
    "color": BuiltinLoss(color_loss(DEFAULT_COLOR), color_loss, 400.0, "#rrggbb, a CSS colour name or r,g,b"),
    "warm": BuiltinLoss(warm_loss, None, 200.0),
    "sepia": BuiltinLoss(sepia_loss, None, 400.0),
    "saturation": BuiltinLoss(saturation_loss, None, 200.0),
    "contrast": BuiltinLoss(contrast_loss, None, 200.0),
    "canny": BuiltinLoss(canny_edges_loss, canny_loss, 100.0, "a reference image file"),
    "symmetry": BuiltinLoss(symmetry_loss, None, 300.0),
    "clip": BuiltinLoss(None, clip_loss, 100.0, "the text to steer toward"),
}


def _builtin(name: str) -> tuple[BuiltinLoss | None, str | None]:
    """('color=#f80') -> (entry for color, '#f80'); (None, None) when NAME is not a built-in."""
    base, sep, arg = name.partition("=")
    entry = BUILTIN_LOSSES.get(base.strip())
    return entry, (arg if sep else None)


def check_loss(term: LossTerm) -> LossTerm:
    """Validate a term cheaply (no model weights load): known name, argument where needed, importable function."""
    if term.fn is not None:
        return term
    entry, arg = _builtin(term.name)
    if entry is None:
        resolve_loss(term)                                  # module:function: importing is cheap
    elif arg is None and entry.fn is None:
        raise BadInput(f"loss {term.name!r} needs an argument: {term.name}=ARG with ARG {entry.arg}")
    elif arg is not None and entry.factory is None:
        raise BadInput(f"loss {term.name.partition('=')[0]!r} takes no argument, got {term.name!r}")
    elif arg is not None and entry.factory is not clip_loss:
        entry.factory(arg)                                  # colours and reference images are cheap to check
    elif arg is not None and not arg.strip():
        raise BadInput(f"loss {term.name!r}: empty argument; expected {entry.arg}")
    return term


def model_loss(model: Any, term: LossTerm) -> Loss:
    """`resolve_loss`, kept on `model.losses` like decoders: CLIP loads once per model, not once per batch.

    Several `clip=TEXT` terms share one loaded CLIP; an API term's own `fn` is used as it is.
    """
    if term.fn is not None:
        return term.fn
    cache = model.losses
    if term.name not in cache:
        entry, arg = _builtin(term.name)
        if entry is not None and entry.factory is clip_loss and arg is not None:
            key = ("clip-model", DEFAULT_CLIP)
            if key not in cache:
                cache[key] = load_clip(DEFAULT_CLIP)
            cache[term.name] = clip_loss(arg, components=cache[key])
        else:
            cache[term.name] = resolve_loss(term)
    return cache[term.name]


def resolve_loss(term: LossTerm) -> Loss:
    """The callable behind a loss term: its own `fn`, a built-in (`NAME` or `NAME=ARG`), or module:function."""
    if term.fn is not None:
        return term.fn
    entry, arg = _builtin(term.name)
    if entry is not None:
        if arg is None:
            if entry.fn is None:
                raise BadInput(f"loss {term.name!r} needs an argument: {term.name}=ARG with ARG {entry.arg}")
            return entry.fn
        if entry.factory is None:
            raise BadInput(f"loss {term.name.partition('=')[0]!r} takes no argument, got {term.name!r}")
        return entry.factory(arg)
    if ":" in term.name:
        module, _, attr = term.name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise BadInput(f"loss {term.name!r}: cannot import it ({err})") from err
        if not callable(fn):
            raise BadInput(f"loss {term.name!r} is not callable")
        return fn
    raise BadInput(f"unknown loss {term.name!r}; built-in: {', '.join(BUILTIN_LOSSES)}, or module:function")


def loss_default_scale(name: str) -> float:
    """The built-in's default scale, or DEFAULT_SCALE for user losses."""
    entry, _ = _builtin(name)
    return entry.default_scale if entry is not None else DEFAULT_SCALE


def resolve_scales(guidance: Guidance) -> Guidance:
    """`guidance` with each scale left as None replaced by its loss's default (the number the recipe records)."""
    if all(t.scale is not None for t in guidance.losses):
        return guidance
    terms = tuple(t if t.scale is not None else replace(t, scale=loss_default_scale(t.name)) for t in guidance.losses)
    return replace(guidance, losses=terms)


def parse_loss_spec(spec: str, default_scale: float | None = None) -> LossTerm:
    """'NAME[:SCALE]' -> LossTerm; NAME may be 'NAME=ARG' or 'module:function'; no SCALE -> the loss's default."""
    name, sep, last = spec.rpartition(":")
    if not spec.strip() or (sep and not name.strip()):
        raise BadInput(f"--loss {spec!r}: expected NAME[:SCALE]")
    try:
        scale: float | None = float(last) if name else None
    except ValueError:
        scale = None
    if scale is None:
        head = spec.partition(":")[0]
        if name and _builtin(head)[0] is not None and "=" not in head:
            raise BadInput(f"--loss {spec!r}: scale {last!r} is not a number; expected NAME[:SCALE]")
        name = spec
        scale = default_scale if default_scale is not None else loss_default_scale(spec)
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise BadInput(f"--loss {spec!r}: scale must be a finite number")
    return LossTerm(name=name, scale=scale)
