"""Read old torch checkpoints that `weights_only=True` rejects, without running any code from the file.

2022 textual-inversion files (the original rinongal format and early A1111) pickle an `nn.ParameterDict`,
which torch's weights-only loader refuses. A pickle rebuilds objects by calling whatever globals it
names, so the only safe way to read one is to decide what each name means ourselves: `find_class`
maps a short allow-list of names to small stand-ins defined here and refuses everything else.

* tensors and parameters are rebuilt from the raw storage bytes with `torch.frombuffer`;
* the ParameterDict is a stand-in that only keeps the state the pickle hands it (no torch Module code
  runs: old pickles lack attributes that newer ParameterDict methods expect, and the `_parameters`
  dict holds the tensors in every torch version);
* `OrderedDict` and `set` are the builtins (their constructors only store the items).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import torch

MAX_STORAGE_BYTES = 256 * 2**20  # embeddings are KBs; refuse absurd storages instead of allocating them


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names something outside the allow-list (code, or an object we do not rebuild)."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class _Storage:
    """A storage as the pickle refers to it: its dtype and raw little-endian bytes."""

    def __init__(self, dtype: torch.dtype, data: bytes):
        self.dtype, self.data = dtype, data


class _TensorRef:
    """Wraps rebuilt tensors while unpickling so a BUILD opcode can never reach Tensor.__setstate__."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __setstate__(self, state):
        raise RefusedPickle("state applied to a tensor")


class _PickledModule:
    """Stand-in for a pickled `nn.ParameterDict`: keeps the state dict it is given, nothing else."""

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict_state, slots_state) for classes with __slots__
            state = state[0]
        if not isinstance(state, dict):
            raise RefusedPickle("ParameterDict with an unexpected state")
        self.state = state

    def parameters(self) -> dict:
        params = getattr(self, "state", {}).get("_parameters", {})
        return dict(params) if isinstance(params, dict) else {}


def _storage_class(dtype: torch.dtype):
    """A stand-in for `torch.FloatStorage` & co.: only its dtype matters."""
    return type(f"_{dtype}Storage", (), {"dtype": dtype})


_STORAGES = {f"torch.{name}Storage": _storage_class(dt) for name, dt in {
    "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16, "Double": torch.float64,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool}.items()}


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_ignored) -> _TensorRef:
    """(storage, offset, size, stride, requires_grad, hooks, metadata) -> tensor, copied out of the bytes."""
    if not isinstance(storage, _Storage):
        raise RefusedPickle("tensor without a storage")
    itemsize = torch.empty((), dtype=storage.dtype).element_size()
    if len(storage.data) % itemsize:
        raise pickle.UnpicklingError("storage size is not a multiple of its element size")
    size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
    if any(n < 0 for n in size) or itemsize * torch.Size(size).numel() > MAX_STORAGE_BYTES:
        raise pickle.UnpicklingError(f"tensor of size {size} is too large for an embedding")
    flat = torch.frombuffer(bytearray(storage.data), dtype=storage.dtype) if storage.data else \
        torch.empty(0, dtype=storage.dtype)
    return _TensorRef(torch.as_strided(flat, size, stride, int(offset)).clone())


def _rebuild_parameter(data: _TensorRef, *_ignored) -> _TensorRef:
    """A Parameter is only its tensor to us (requires_grad and hooks are dropped)."""
    if not isinstance(data, _TensorRef):
        raise RefusedPickle("parameter without a tensor")
    return data


_ALLOWED: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.nn.modules.container.ParameterDict": _PickledModule,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set, "__builtin__.set": set,  # protocol-2 pickles spell builtins "__builtin__"
    **_STORAGES,
}


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals come only from the allow-list; storages come from a torch zip."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[f"{module}.{name}"]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None

    def persistent_load(self, pid):
        # torch's zip format: ('storage', storage_type, key, location, numel); the location is ignored (CPU)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise RefusedPickle(f"persistent id {str(pid)[:40]}")
        _, storage_type, key, _location, _numel = pid
        dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str):
            raise RefusedPickle("storage of an unknown type")
        if key not in self._storages:
            info = self._archive.getinfo(f"{self._prefix}data/{key}")
            if info.file_size > MAX_STORAGE_BYTES:
                raise pickle.UnpicklingError(f"storage {key} is {info.file_size} bytes: too large for an embedding")
            self._storages[key] = _Storage(dtype, self._archive.read(info))
        return self._storages[key]


def _unwrap(obj: Any, depth: int = 0) -> Any:
    """Stand-ins -> plain tensors and dicts (a ParameterDict becomes the dict of its parameters)."""
    if depth > 50:
        raise pickle.UnpicklingError("nesting too deep")
    if isinstance(obj, _TensorRef):
        return obj.tensor
    if isinstance(obj, _PickledModule):
        return {k: _unwrap(v, depth + 1) for k, v in obj.parameters().items()}
    if isinstance(obj, dict):
        return {k: _unwrap(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(v, depth + 1) for v in obj)
    return obj


def load_torch_zip(data: bytes) -> Any:
    """Unpickle a torch zip checkpoint with the allow-list; raises RefusedPickle or UnpicklingError."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise pickle.UnpicklingError("not a torch checkpoint (no single */data.pkl in the zip)")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise pickle.UnpicklingError("big-endian checkpoints are not supported")
        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix)
        return _unwrap(unpickler.load())
