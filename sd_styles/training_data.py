"""Training images and the random draws of each training step, as diffusers' textual-inversion script makes them.

Images are centre-cropped to a square and resized (bicubic) once; a step then picks images, flips and
prompt templates. Every draw of step `s` comes from generators seeded by `(seed, s)` alone, so a resumed
run repeats the uninterrupted run's draws exactly without replaying anything.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInput

log = logging.getLogger(__name__)

MAX_IMAGES = 10_000          # a training folder is a handful of pictures; more is almost surely the wrong folder
MAX_FILE_BYTES = 200 << 20   # larger files are not read at all (PIL also refuses decompression bombs)

# The textual-inversion paper's templates, as diffusers' examples/textual_inversion/textual_inversion.py lists them.
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
)
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


@dataclass(frozen=True)
class ImageFile:
    """One readable image of a folder."""

    path: Path
    sha256: str              # of the file's bytes: training metadata records which pictures taught the concept
    image: Image.Image       # RGB, EXIF orientation applied


def read_image(path: Path) -> Image.Image:
    """Open one image fully as RGB (phone photos turned upright by their EXIF orientation); raises on failure."""
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")


def read_image_folder(folder: str | Path, what: str = "--images") -> list[ImageFile]:
    """Every readable image in `folder` (sorted by name); other files are skipped with a warning naming them."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BadInput(f"{what} {folder}: not a folder; give a folder of images (png, jpg, webp, ...)")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    images, skipped = [], []
    for path in files:
        if path.is_dir():
            continue
        if len(images) >= MAX_IMAGES:
            raise BadInput(f"{what} {folder}: more than {MAX_IMAGES} images; is this the right folder?")
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES >> 20} MB")
            data = path.read_bytes()
            images.append(ImageFile(path, hashlib.sha256(data).hexdigest(), read_image(path)))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            skipped.append(path.name)
            log.warning("skipping %s: not a readable image (%s)", path, str(err).splitlines()[0][:120] if str(err) else type(err).__name__)
    if not images:
        extra = f" ({len(skipped)} unreadable file(s) skipped: {', '.join(skipped[:5])})" if skipped else ""
        raise BadInput(f"{what} {folder}: no readable images{extra}; put 3-5 png/jpg/webp pictures in it")
    return images


def prepare(image: Image.Image, size: int, center_crop: bool = True) -> np.ndarray:
    """Centre-crop to a square, resize to size x size (bicubic) as the diffusers script does: (size, size, 3) uint8."""
    arr = np.asarray(image, dtype=np.uint8)
    if center_crop:
        crop = min(arr.shape[0], arr.shape[1])
        h, w = arr.shape[:2]
        arr = arr[(h - crop) // 2:(h + crop) // 2, (w - crop) // 2:(w + crop) // 2]
    return np.asarray(Image.fromarray(arr).resize((size, size), resample=Image.Resampling.BICUBIC), dtype=np.uint8)


def to_pixels(arr: np.ndarray, flip: bool) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1], mirrored left-right when `flip`."""
    if flip:
        arr = arr[:, ::-1]
    return torch.from_numpy((arr / 127.5 - 1.0).astype(np.float32)).permute(2, 0, 1).contiguous()


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator for one (seed, optimizer step, stream): the same draws whenever that step runs."""
    state = np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class Draw:
    """What one micro-batch trains on."""

    images: list[int]          # index into the prepared images, one per sample
    flips: list[bool]          # horizontal flip per sample (p = 0.5)
    prompts: list[str]         # a random template filled with the placeholder tokens, per sample


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The shuffled image order of one pass over the data (a DataLoader with shuffle=True)."""
    return torch.randperm(n, generator=step_generator(seed, epoch, 1)).tolist()


def draw(seed: int, step: int, micro: int, batch_size: int, grad_accum: int, n_images: int,
         templates: tuple[str, ...], placeholder: str) -> Draw:
    """Images (epoch-shuffled, without replacement within an epoch), flips and templates of one micro-batch."""
    first = (step * grad_accum + micro) * batch_size  # index of this micro-batch's first sample in the sample stream
    images = []
    for k in range(first, first + batch_size):
        images.append(epoch_order(seed, k // n_images, n_images)[k % n_images])
    g = step_generator(seed, step * grad_accum + micro, 2)
    flips = (torch.rand(batch_size, generator=g) < 0.5).tolist()
    picks = torch.randint(0, len(templates), (batch_size,), generator=g).tolist()
    return Draw(images, flips, [templates[p].format(placeholder) for p in picks])
