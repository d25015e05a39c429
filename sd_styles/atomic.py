"""Atomic file writes: temp file in the target folder, fsync, rename, fsync the folder. A reader never sees a
partial file, and a crash right after the rename cannot lose it. Files get the permissions a plain `open`
would give (0666 less the umask), not mkstemp's private 0600: grids and exports are meant to be shared.

Temp files are named `.tmp-<pid>-<random><suffix>`, so a later run can tell the debris of a killed
process (its pid is gone) from the work in progress of a live one, and clean only the former.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

from PIL import Image

TEMP_PREFIX = ".tmp-"
STALE_AFTER_S = 3600.0  # where liveness cannot be checked (Windows), only this old a temp file is debris


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temp file next to `path`, then rename it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # POSIX: mkstemp made it 0600
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set and return)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself: the folder's entry list must reach the disk too (POSIX; a no-op on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the data itself is already synced
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save_image(image: Image.Image, path: str | Path, format: str, **options) -> Path:
    """`image.save` atomically (options as for PIL: quality, exif, pnginfo...)."""
    return atomic_write(path, lambda f: image.save(f, format=format, **options))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """A temp file whose writer is gone (killed mid-write): safe to delete."""
    if not path.name.startswith(TEMP_PREFIX):
        return False
    pid_text = path.name[len(TEMP_PREFIX):].split("-", 1)[0]
    if os.name == "nt" or not pid_text.isdigit():
        # os.kill(pid, 0) would send CTRL_C on Windows; fall back to age
        try:
            return (now or time.time()) - path.stat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            return False
    return not _pid_alive(int(pid_text))


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files that killed runs left in `folder`; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(f"{TEMP_PREFIX}*"):
        if path.is_file() and is_stale_temp(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
