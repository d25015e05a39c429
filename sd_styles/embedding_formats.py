"""Parse textual-inversion files of every common layout into one format-neutral `Embedding`.

The container is sniffed from the bytes, never trusted from the extension (A1111 dicts are saved as
`.bin`, sd-concepts files as `.bin` or `.pt`): safetensors, torch zip, PNG with an `sd-ti-embedding`
chunk. Torch checkpoints (zip or legacy) are read by the allow-list unpickler in `safe_pickle` only,
never by `torch.load`: it runs no code from the file and bounds what the file can allocate. The layout
is then read from the object's keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass

import torch

from .errors import BadInput
from .safe_pickle import RefusedPickle, load_torch_legacy, load_torch_zip

LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_KEY = "sd-ti-embedding"
# width of the text encoder(s) -> the model family it fits; named in every width message
FAMILIES = {768: "SD 1.x", 1024: "SD 2.x"}
SDXL_KEYS = ("clip_l", "clip_g")  # SDXL: CLIP ViT-L (768) + OpenCLIP bigG (1280)
TEXT = "text_encoder"             # the one encoder of SD 1.x / 2.x embeddings
WIDTHS_HELP = "768 fits SD 1.x, 1024 SD 2.x, 768+1280 (clip_l+clip_g) SDXL"


@dataclass(frozen=True)
class Embedding:
    """Vectors of one concept, whatever file they came from."""

    format: str                        # sd-concepts|diffusers|a1111|textual-inversion|emb_params|sdxl|tensor
    container: str                     # safetensors | torch (allow-list unpickler) | torch legacy (...) | png
    own_token: str | None              # the token stored in the file, if it has one
    vectors: dict[str, torch.Tensor]   # encoder -> float32 [n_vectors, width]: {TEXT: ...} or clip_l + clip_g

    @property
    def n_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        return {k: v.shape[1] for k, v in self.vectors.items()}

    @property
    def is_sdxl(self) -> bool:
        return set(self.vectors) == set(SDXL_KEYS)

    @property
    def family(self) -> str:
        """The model family these vectors fit, as users name it."""
        if self.is_sdxl:
            return "SDXL"
        return FAMILIES.get(self.widths[TEXT], "no known SD family")

    @property
    def width_label(self) -> str:
        """'768' or '768+1280' (SDXL)."""
        return "+".join(str(w) for w in self.widths.values())


def family_of(width: int) -> str:
    return FAMILIES.get(width, "no known SD family")


def parse_embedding(data: bytes, label: str) -> Embedding:
    """Bytes of an embedding file -> Embedding; every failure is a one-line BadInput naming `label`."""
    if data.startswith(LFS_POINTER):
        raise BadInput(f"{label} is a Git LFS pointer, not the embedding itself: fetch the real file "
                       "(git lfs pull, or download it from the hub)")
    if not data.strip():
        raise BadInput(f"{label} is empty: a corrupt or unfinished download")
    if data.startswith(PNG_MAGIC):
        return interpret(_read_png(data, label), "png", label)
    if _looks_like_safetensors(data):
        return interpret(_read_safetensors(data, label), "safetensors", label)
    if data.startswith(b"PK\x03\x04"):
        return interpret(_read_torch(load_torch_zip, data, label), "torch (allow-list unpickler)", label)
    if data[:1] == b"\x80":  # a bare pickle (torch's pre-1.6 format, or plain pickle.dump)
        return interpret(_read_torch(load_torch_legacy, data, label), "torch legacy (allow-list unpickler)", label)
    raise BadInput(f"{label} is not an embedding file (not safetensors, a torch checkpoint or an A1111 PNG)")


def _looks_like_safetensors(data: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object (a truncated file still sniffs as one: corrupt)
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n < 2**27 and data[8:9] == b"{"


def _read_safetensors(data: bytes, label: str) -> dict:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as err:  # SafetensorError: truncated file, bad header, bad offsets
        raise BadInput(f"{label} is a corrupt safetensors file ({_first_line(err)})") from None


def _read_torch(reader, data: bytes, label: str) -> object:
    """Run one of safe_pickle's readers; refusals and damage become one-line BadInput."""
    try:
        return reader(data)
    except RefusedPickle as err:
        raise BadInput(f"{label} was refused: its pickle asks for {err.what}, and embedding files are only ever "
                       "read as tensors, dicts and ParameterDicts (no code from a file is run)") from None
    except Exception as err:  # UnpicklingError, BadZipFile, EOFError...: damaged, truncated or oversized
        raise BadInput(f"{label} is a corrupt torch file ({_first_line(err)})") from None


def _read_png(data: bytes, label: str) -> dict:
    """A1111 'embedding in image': base64 JSON in a text chunk, tensors as {"TORCHTENSOR": [[...]]}."""
    text = _png_text_chunk(data, PNG_KEY)
    if text is None:
        raise BadInput(f"{label} is a PNG without an '{PNG_KEY}' text chunk: not an A1111 embedding image")

    def tensors(obj: dict):
        return torch.tensor(obj["TORCHTENSOR"], dtype=torch.float32) if set(obj) == {"TORCHTENSOR"} else obj

    try:
        return json.loads(base64.b64decode(text, validate=False), object_hook=tensors)
    except (binascii.Error, ValueError, TypeError) as err:
        raise BadInput(f"{label}: corrupt '{PNG_KEY}' chunk ({_first_line(err)})") from None


def _png_text_chunk(data: bytes, key: str) -> str | None:
    """The text of a tEXt / zTXt / iTXt chunk named `key` (read directly: no pixel decoding, no size caps)."""
    pos = len(PNG_MAGIC)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length  # length, type, body, CRC
        name, _, rest = body.partition(b"\0")
        if kind not in (b"tEXt", b"zTXt", b"iTXt") or name.decode("latin-1") != key:
            if kind == b"IEND":
                break
            continue
        try:
            if kind == b"tEXt":
                return rest.decode("latin-1")
            if kind == b"zTXt":
                return zlib.decompress(rest[1:]).decode("latin-1")
            compressed, rest = rest[0], rest[2:]             # iTXt: flag, method, lang\0, translated\0, text
            text = rest.split(b"\0", 2)[2]
            return (zlib.decompress(text) if compressed else text).decode("utf-8")
        except (zlib.error, IndexError, UnicodeDecodeError):
            return None
    return None


def interpret(obj: object, container: str, label: str) -> Embedding:
    """A loaded object -> Embedding, by its layout (keys and shapes, never the file extension)."""
    fmt, token, vectors = _layout(obj, label)
    checked = {k: _as_vectors(v, f"{label} [{k}]") for k, v in vectors.items()}
    if len({v.shape[0] for v in checked.values()}) > 1:
        raise BadInput(f"{label}: clip_l and clip_g hold different numbers of vectors")
    if isinstance(token, str) and not token.strip():
        token = None
    return Embedding(format=fmt, container=container, own_token=token, vectors=checked)


def _layout(obj: object, label: str) -> tuple[str, str | None, dict]:
    """(format, the file's own token or None, {encoder: tensor}) of every known layout."""
    if isinstance(obj, torch.Tensor):  # a bare [n, d] tensor (diffusers training output saved as a tensor)
        return "tensor", None, {TEXT: obj}
    if not isinstance(obj, dict) or not obj:
        raise BadInput(f"{label} holds {type(obj).__name__}, not textual-inversion vectors")
    if "string_to_param" in obj:  # A1111, and the original textual-inversion (2022) format before it
        params = obj["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise BadInput(f"{label}: string_to_param must hold exactly one tensor, found {_keys(params)}")
        key, tensor = next(iter(params.items()))
        name = obj.get("name")
        # A1111 convention (and diffusers'): `name` is the token; else a real placeholder word ('*' is none)
        own = name if isinstance(name, str) else (key if isinstance(key, str) and key != "*" else None)
        return ("a1111" if "name" in obj else "textual-inversion"), own, {TEXT: tensor}
    if set(SDXL_KEYS) <= set(obj):
        return "sdxl", None, {k: obj[k] for k in SDXL_KEYS}
    if "emb_params" in obj:
        return "emb_params", None, {TEXT: obj["emb_params"]}
    if len(obj) == 1:
        key, tensor = next(iter(obj.items()))
        if isinstance(key, str) and isinstance(tensor, torch.Tensor):
            return ("sd-concepts" if tensor.dim() == 1 else "diffusers"), key, {TEXT: tensor}
    raise BadInput(f"{label} is not a textual-inversion embedding (keys: {_keys(obj)}); expected "
                   "{token: vector}, A1111 string_to_param, emb_params or SDXL clip_l/clip_g")


def _as_vectors(t: object, label: str) -> torch.Tensor:
    """Any accepted tensor -> float32 [n, width]; refuses non-float, empty or non-finite data."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise BadInput(f"{label} is {type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}, "
                       "not floating-point vectors")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or 0 in t.shape:
        raise BadInput(f"{label} has shape {list(t.shape)}; expected [width] or [n_vectors, width]")
    t = t.detach().to(torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise BadInput(f"{label} contains NaN or infinite values: a corrupt embedding")
    return t


def _keys(obj: object) -> str:
    keys = list(obj)[:6] if isinstance(obj, dict) else [type(obj).__name__]
    return ", ".join(map(str, keys)) or "none"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:120]
