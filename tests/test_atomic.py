"""Atomic writes: files get the mode any other new file would get (the umask), not mkstemp's private 0600."""

import os
import stat
import sys

import pytest

from clipforge.atomic import atomic_open, atomic_write_bytes, current_umask

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture()
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o000, 0o666)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"data")
    assert _mode(path) == expected
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"data")  # what any other writer would produce
    assert _mode(plain) == expected
    with atomic_open(tmp_path / "opened.bin") as handle:
        handle.write(b"data")
    assert _mode(tmp_path / "opened.bin") == expected
    assert path.read_bytes() == b"data"


def test_replacing_a_file_keeps_its_permissions(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "secret.json"
    path.write_bytes(b"old")
    path.chmod(0o640)  # the user restricted it: an in-place rewrite would keep that
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o640


def test_no_temporary_file_is_left_and_the_mode_is_set_before_the_rename(tmp_path, umask, monkeypatch):
    umask(0o022)
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(_mode(src))  # readers see the file from the rename on: its mode must be right by then
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(tmp_path / "out.bin", b"x")
    assert seen == [0o644]
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_current_umask_reads_without_changing_it(umask, monkeypatch):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # unchanged by reading
    # Without /proc (macOS, BSD) the fallback sets and restores it.
    import builtins

    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert current_umask() == 0o027
    umask(0o022)
    assert current_umask() == 0o022
