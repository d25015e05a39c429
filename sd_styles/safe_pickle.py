"""Read torch checkpoints (zip and legacy formats) without running any code from the file and without torch.load.

A pickle rebuilds objects by calling whatever globals it names, so the only safe way to read one is to
decide what each name means ourselves: `find_class` maps a short allow-list of names to immutable
stand-ins defined here and refuses everything else. torch's own `weights_only` loader is never used:
it had code-execution advisories (CVE-2025-32434 below torch 2.6), and one parser is easier to bound.

* tensors and parameters are rebuilt from the raw storage bytes (`torch.frombuffer`, bounds checked);
* an `nn.ParameterDict` (2022 textual-inversion files) becomes a per-load stand-in that only keeps the
  state the pickle hands it: no torch Module code runs, and a BUILD opcode aimed at it (or at any
  allow-listed global) cannot change what a later file in the same process reads;
* `OrderedDict` and `set` are the builtins (immutable types; their constructors only store items).

Bounds: zip entries must be stored uncompressed, as torch writes them, and are size-checked before they
are read, so a deflate bomb costs nothing; every storage and tensor is capped; the object walk is capped.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, BinaryIO, Callable

import torch

MAX_STORAGE_BYTES = 256 * 2**20  # embeddings are KBs; refuse absurd storages instead of allocating them
MAX_PICKLE_BYTES = 16 * 2**20    # data.pkl of an embedding is a few KB
MAX_OBJECTS = 1_000_000          # objects visited when unwrapping (shared references could blow up the walk)
MAX_TENSOR_BYTES = MAX_STORAGE_BYTES  # all tensors of one file together (stride-0 tensors could repeat bytes)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (pre-1.6 format)
LEGACY_PROTOCOL = 1001

# storage class name -> dtype: a constant, never class state that a pickle could reach
STORAGE_DTYPES = MappingProxyType({f"torch.{name}Storage": dt for name, dt in {
    "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16, "Double": torch.float64,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool}.items()})


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names something outside the allow-list (code, or an object we do not rebuild)."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class _Frozen:
    """Base of the stand-ins a pickle can reach: no attribute can be set, BUILD (`__setstate__`) is refused."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise RefusedPickle(f"setting {name!r} on {type(self).__name__}")

    def __delattr__(self, name):
        raise RefusedPickle(f"deleting {name!r} on {type(self).__name__}")

    def __setstate__(self, state):
        raise RefusedPickle(f"state applied to {type(self).__name__}")


class _StorageType(_Frozen):
    """Stand-in for `torch.FloatStorage` & co.: only its name, looked up in STORAGE_DTYPES."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    @property
    def dtype(self) -> torch.dtype:
        return STORAGE_DTYPES[self.name]


class _Storage(_Frozen):
    """A storage as the pickle refers to it: its dtype and raw little-endian bytes."""

    __slots__ = ("dtype", "data")

    def __init__(self, dtype: torch.dtype, data: bytes):
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "data", data)


class _TensorRef(_Frozen):
    """A tensor as the pickle describes it; its bytes are copied out when the load is finished (`tensor()`).

    Lazy because legacy files store the bytes after the pickle. A BUILD opcode can never reach it."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        for name, value in zip(self.__slots__, (storage, offset, size, stride)):
            object.__setattr__(self, name, value)

    @property
    def nbytes(self) -> int:
        count = 1
        for n in self.size:
            count *= n
        return count * torch.empty((), dtype=self.storage.dtype).element_size()

    def tensor(self) -> torch.Tensor:
        """Copy the tensor out of its storage, after checking that it lies inside it."""
        data, dtype = self.storage.data, self.storage.dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(data) % itemsize:
            raise pickle.UnpicklingError("storage size is not a multiple of its element size")
        numel = len(data) // itemsize
        if 0 not in self.size and self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) >= numel:
            raise pickle.UnpicklingError("tensor reaches past the end of its storage")
        flat = torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        return torch.as_strided(flat, self.size, self.stride, self.offset).clone()


class _Function(_Frozen):
    """An allow-listed callable global (`torch._utils._rebuild_tensor_v2`, ...), dispatched by name."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __call__(self, *args):
        return _FUNCTIONS[self.name](*args)


class _PickledModule:
    """Base of the per-load `nn.ParameterDict` stand-in: a real class (NEWOBJ needs one), fresh for every load."""

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict_state, slots_state) for classes with __slots__
            state = state[0]
        if not isinstance(state, dict):
            raise RefusedPickle("ParameterDict with an unexpected state")
        self.__dict__["state"] = state


def _module_parameters(module: _PickledModule) -> dict:
    """The `_parameters` dict of a pickled module, read from its instance dict (no method of it is called)."""
    state = vars(module).get("state")
    params = state.get("_parameters", {}) if isinstance(state, dict) else {}
    return dict(params) if isinstance(params, dict) else {}


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_ignored) -> _TensorRef:
    """(storage, offset, size, stride, requires_grad, hooks, metadata) -> a tensor reference, size-checked."""
    if not isinstance(storage, _Storage):
        raise RefusedPickle("tensor without a storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(type(v) is int for v in (offset, *size, *stride))):
        raise pickle.UnpicklingError("tensor with a malformed size or stride")
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
        raise pickle.UnpicklingError("tensor with a negative size, stride or offset")
    count = 1
    for n in size:
        count = min(count * n, MAX_STORAGE_BYTES + 1)
    if count * torch.empty((), dtype=storage.dtype).element_size() > MAX_STORAGE_BYTES:
        raise pickle.UnpicklingError(f"tensor of size {size} is too large for an embedding")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: _TensorRef, *_ignored) -> _TensorRef:
    """A Parameter is only its tensor to us (requires_grad and hooks are dropped)."""
    if not isinstance(data, _TensorRef):
        raise RefusedPickle("parameter without a tensor")
    return data


_FUNCTIONS: MappingProxyType[str, Callable] = MappingProxyType({
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
})
_BUILTINS = MappingProxyType({  # immutable types: setattr on them raises TypeError
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set, "__builtin__.set": set,  # protocol-2 pickles spell builtins "__builtin__"
})
PARAMETER_DICT = "torch.nn.modules.container.ParameterDict"


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals come only from the allow-list; storages from `read_storage(key, dtype)`."""

    def __init__(self, file: BinaryIO, read_storage: Callable[[str, torch.dtype], _Storage] | None = None):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: dict[str, _Storage] = {}
        self._module_class = type("ParameterDict", (_PickledModule,), {"__module__": __name__})

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in _FUNCTIONS:
            return _Function(full)
        if full in STORAGE_DTYPES:
            return _StorageType(full)
        if full in _BUILTINS:
            return _BUILTINS[full]
        if full == PARAMETER_DICT:
            return self._module_class
        raise RefusedPickle(full)

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy: the same plus view_metadata. Location: CPU.
        # legacy files also name each module class with its source: ('module', class, file, source)
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and pid[1] is self._module_class:
            return pid[1]
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage") or self._read_storage is None:
            raise RefusedPickle(f"persistent id {str(pid)[:40]}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise RefusedPickle("storage of an unknown type")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, storage_type.dtype)
        if len(pid) == 6 and pid[5] is not None:  # sub-storage views: only torch before 1.0 wrote them
            raise pickle.UnpicklingError("legacy storage views are not supported")
        return self._storages[key]


def _load(unpickler: pickle.Unpickler) -> Any:
    """`unpickler.load()`, with a malformed stream's TypeError & co. reported as an UnpicklingError."""
    try:
        return unpickler.load()
    except pickle.UnpicklingError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, EOFError, RecursionError) as err:
        raise pickle.UnpicklingError(f"malformed pickle ({type(err).__name__}: {str(err)[:80]})") from None


def _unwrap(obj: Any, budget: list[int], depth: int = 0) -> Any:
    """Stand-ins -> plain tensors and dicts (a ParameterDict becomes the dict of its parameters).

    `budget` is [objects left, tensor bytes left]: the walk and what it allocates are bounded."""
    budget[0] -= 1
    if depth > 50 or budget[0] < 0:
        raise pickle.UnpicklingError("nesting too deep or too many objects for an embedding")
    if isinstance(obj, _TensorRef):
        budget[1] -= obj.nbytes
        if budget[1] < 0:
            raise pickle.UnpicklingError("tensors too large in total for an embedding")
        return obj.tensor()
    if isinstance(obj, _PickledModule):
        return {k: _unwrap(v, budget, depth + 1) for k, v in _module_parameters(obj).items()}
    if isinstance(obj, _Frozen):
        raise RefusedPickle(f"a bare {type(obj).__name__.strip('_')} outside a tensor")
    if isinstance(obj, dict):
        return {k: _unwrap(v, budget, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(v, budget, depth + 1) for v in obj)
    return obj


def _stored_entry(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """Read one zip entry only if it is stored uncompressed (as torch writes) and within `limit` bytes."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise pickle.UnpicklingError(f"{name} is compressed; torch writes checkpoints uncompressed")
    if info.file_size > limit:
        raise pickle.UnpicklingError(f"{name} is {info.file_size} bytes: too large for an embedding")
    return archive.read(info)


def load_torch_zip(data: bytes) -> Any:
    """Unpickle a torch zip checkpoint with the allow-list; raises RefusedPickle or UnpicklingError."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise pickle.UnpicklingError("not a torch checkpoint (no single */data.pkl in the zip)")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and _stored_entry(archive, f"{prefix}byteorder", 16).strip() != b"little":
            raise pickle.UnpicklingError("big-endian checkpoints are not supported")

        def read_storage(key: str, dtype: torch.dtype) -> _Storage:
            try:
                return _Storage(dtype, _stored_entry(archive, f"{prefix}data/{key}", MAX_STORAGE_BYTES))
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None

        unpickler = RestrictedUnpickler(io.BytesIO(_stored_entry(archive, pkl[0], MAX_PICKLE_BYTES)), read_storage)
        return _unwrap(_load(unpickler), [MAX_OBJECTS, MAX_TENSOR_BYTES])


def load_torch_legacy(data: bytes) -> Any:
    """torch's pre-1.6 format (`_use_new_zipfile_serialization=False`): header pickles, the object, storages.

    Layout: magic number, protocol, sys_info, the object pickle (storages as persistent ids), the list of
    storage keys, then per key an int64 element count and the raw bytes. A plain pickle (no magic number)
    is read by the same allow-list, with no storages.
    """
    stream = io.BytesIO(data)
    first = _load(RestrictedUnpickler(stream))
    if first != LEGACY_MAGIC:
        return _unwrap(first, [MAX_OBJECTS, MAX_TENSOR_BYTES])
    if _load(RestrictedUnpickler(stream)) != LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("unknown legacy torch protocol version")
    info = _load(RestrictedUnpickler(stream))
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise pickle.UnpicklingError("big-endian or malformed legacy checkpoint")
    storages: dict[str, _Storage] = {}

    def read_storage(key: str, dtype: torch.dtype) -> _Storage:
        return storages.setdefault(key, _Storage(dtype, b""))  # bytes follow the pickle: filled in below

    obj = _load(RestrictedUnpickler(stream, read_storage))
    keys = _load(RestrictedUnpickler(stream))
    if not isinstance(keys, list) or set(keys) != set(storages) or len(keys) != len(storages):
        raise pickle.UnpicklingError("storage list does not match the pickle")
    for key in keys:
        storage = storages[key]
        itemsize = torch.empty((), dtype=storage.dtype).element_size()
        header = stream.read(8)
        if len(header) != 8:
            raise pickle.UnpicklingError("truncated legacy checkpoint")
        (numel,) = struct.unpack("<q", header)
        size = numel * itemsize
        if numel < 0 or size > MAX_STORAGE_BYTES or size > len(data) - stream.tell():
            raise pickle.UnpicklingError(f"storage {key} claims {numel} elements: truncated or too large")
        object.__setattr__(storage, "data", stream.read(size))
    return _unwrap(obj, [MAX_OBJECTS, MAX_TENSOR_BYTES])
