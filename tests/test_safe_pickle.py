"""The allow-list reader of torch checkpoints: no torch.load, no poisoning between files, bounded bombs."""

from __future__ import annotations

import io
import os
import pickle
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch

from sd_styles.embedding_formats import parse_embedding
from sd_styles.errors import BadInput
from sd_styles.safe_pickle import RefusedPickle, load_torch_legacy, load_torch_zip


def saved(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def parameterdict_file(seed: int = 0, legacy: bool = False) -> tuple[bytes, torch.Tensor]:
    """A 2022-style textual-inversion file: string_to_param is an nn.ParameterDict."""
    vec = torch.randn(2, 32, generator=torch.Generator().manual_seed(seed))
    obj = {"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())}), "name": "x"}
    return saved(obj, legacy), vec


def crafted_zip(pkl: bytes, compress: int = zipfile.ZIP_STORED, extra: dict | None = None) -> bytes:
    """A torch-zip-shaped archive holding our own data.pkl."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", pkl)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def no_torch_load(monkeypatch):
    """torch.load (and its module-level twin) raise: every reader must do without them."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must never see untrusted bytes")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_torch_file_is_read_without_torch_load(no_torch_load, legacy):
    plain = {"<cat>": torch.randn(3, 32, generator=torch.Generator().manual_seed(1))}
    emb = parse_embedding(saved(plain, legacy), "plain")
    assert torch.equal(emb.vectors["text_encoder"], plain["<cat>"])
    half = {"<h>": torch.randn(2, 16).half(), "other": torch.arange(6, dtype=torch.float32).reshape(2, 3)[:, 1:]}
    obj = (load_torch_legacy if legacy else load_torch_zip)(saved(half, legacy))
    assert obj["<h>"].dtype == torch.float16 and torch.equal(obj["<h>"], half["<h>"])
    assert torch.equal(obj["other"], half["other"])                       # a strided view of a shared storage
    data, vec = parameterdict_file(legacy=legacy)
    emb = parse_embedding(data, "parameterdict")
    assert emb.container.endswith("(allow-list unpickler)")
    assert torch.equal(emb.vectors["text_encoder"], vec)


def test_legacy_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for data in (saved({"<x>": Evil()}, legacy=True), pickle.dumps({"<x>": Evil()}, protocol=2)):
        with pytest.raises(BadInput, match="refused"):
            parse_embedding(data, "evil")
    assert not marker.exists()


# Three opcodes of payload: GLOBAL a stand-in, a (None, {attr: value}) state, BUILD -> setattr on the stand-in.
POISON_STORAGE = b"\x80\x02ctorch\nFloatStorage\nN}X\x05\x00\x00\x00dtypeNs\x86b."
POISON_MODULE = b"\x80\x02ctorch.nn.modules.container\nParameterDict\nN}X\n\x00\x00\x00parametersNs\x86b."
POISON_FUNCTION = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x04\x00\x00\x00nameX\x01\x00\x00\x00xs\x86b."


@pytest.mark.parametrize("payload", [POISON_STORAGE, POISON_MODULE, POISON_FUNCTION],
                         ids=["storage", "parameterdict", "function"])
def test_a_build_opcode_cannot_poison_later_loads(payload):
    try:
        load_torch_zip(crafted_zip(payload))       # refused now; before the fix it quietly changed a stand-in
    except pickle.UnpicklingError:
        pass
    with pytest.raises(BadInput):
        parse_embedding(crafted_zip(payload), "poison")
    data, vec = parameterdict_file(seed=3)
    assert torch.equal(load_torch_zip(data)["string_to_param"]["*"], vec)   # the allow-list reader itself
    assert torch.equal(parse_embedding(data, "legit").vectors["text_encoder"], vec)
    plain = {"<cat>": torch.ones(1, 32)}
    assert torch.equal(parse_embedding(saved(plain), "plain").vectors["text_encoder"], plain["<cat>"])


def test_a_deflated_pickle_bomb_is_refused_fast_and_small():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w") as f:           # 64 MiB of opcodes, ~64 KB on disk
            f.write(b"\x80\x02")
            for _ in range(64):
                f.write(b"N" * 2**20)
    bomb = buf.getvalue()
    assert len(bomb) < 2**20
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(BadInput, match="compressed"):
        parse_embedding(bomb, "bomb")
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 8 * 2**20, (elapsed, peak)


def test_compressed_storages_and_oversized_tensors_are_refused():
    data = saved({"<x>": torch.zeros(4, 8)})
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    repacked = io.BytesIO()
    with zipfile.ZipFile(repacked, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, body in entries.items():
            z.writestr(name, body)
    with pytest.raises(BadInput, match="compressed"):
        parse_embedding(repacked.getvalue(), "deflated")
    # a tensor that claims 2**40 elements of a 4-byte storage (stride 0): refused before any allocation
    with pytest.raises(BadInput, match="too large"):
        parse_embedding(_strided_file(size=(2**20, 2**20), stride=(0, 0)), "huge")
    with pytest.raises(BadInput, match="past the end"):
        parse_embedding(_strided_file(size=(2, 2), stride=(2, 1)), "overrun")


def _int_tuple(values: tuple) -> bytes:
    """Pickle opcodes of a tuple of ints, without memo entries (BININT per item, then TUPLEn)."""
    return b"".join(b"J" + struct.pack("<i", v) for v in values) + {1: b"\x85", 2: b"\x86"}[len(values)]


def _strided_file(size: tuple, stride: tuple) -> bytes:
    """A real torch zip of one float whose tensor header is rewritten to `size` / `stride`."""
    data = saved({"<x>": torch.zeros(1)})
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in entries if n.endswith("data.pkl"))
    one = b"K\x01\x85"                    # (1,): the size, then the stride
    head, rest = entries[name].split(one, 1)
    middle, tail = rest.split(one, 1)
    middle = middle[:2]                     # keep its BINPUT; size and stride are adjacent
    assert len(rest.split(one, 1)[0]) == 2
    entries[name] = head + _int_tuple(size) + middle + _int_tuple(stride) + tail
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for entry, body in entries.items():
            z.writestr(entry, body)
    return out.getvalue()


def test_unknown_globals_in_a_legacy_file_are_refused():
    with pytest.raises(RefusedPickle):
        load_torch_legacy(pickle.dumps(Path("x"), protocol=2))
