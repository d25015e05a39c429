"""Atomic writes: shared permissions (the umask, not 0600) and a synced folder after the rename."""

from __future__ import annotations

import os
import stat

import pytest

from sd_styles.atomic import atomic_write_text

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "grid.html", "<html></html>")
        reference = tmp_path / "plain.txt"
        reference.write_text("x")                           # what a plain open() gives under this umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode == stat.S_IMODE(reference.stat().st_mode)
    assert path.read_text() == "<html></html>"


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), (tmp_path / "out.txt").exists()))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "out.txt", "hello")
    assert synced[0] == (False, False)                      # the file's bytes, before the rename
    assert synced[-1] == (True, True)                       # then its folder, after the rename
