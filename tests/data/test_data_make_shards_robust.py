"""make-shards under hostile conditions: a second writer into the same folder, temporaries left by a killed run,
a full disk (simulated ENOSPC, and a real 1 MiB tmpfs when mounting one is allowed), file names that are not
UTF-8. Earlier outputs stay intact and sizes.json always matches the shards it lists."""

import errno
import json
import os
import subprocess
import tarfile

import pytest

from clipforge import atomic
from clipforge.atomic import NoSpaceError, atomic_open, atomic_write_bytes
from clipforge.cli.main import main as cli
from clipforge.data import write_shards
from clipforge.data.tarsamples import count_shard_samples
from clipforge.locking import FolderInUseError, output_lock


def _samples(synth, count, start=0, pad=0):
    return [(synth.image_bytes(i) + b"\0" * pad, f"caption {i}", {"i": i}) for i in range(start, start + count)]


def _assert_sizes_match(folder):
    """Every shard sizes.json lists holds exactly that many samples; no temporary file is left."""
    sizes = json.loads((folder / "sizes.json").read_text())
    for name, count in sizes.items():
        assert count_shard_samples(str(folder / name)) == count, name
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp-" in p.name]
    return sizes


def test_a_second_writer_into_the_folder_gets_a_clear_error(tmp_path, synth, capsys):
    out = tmp_path / "out"
    write_shards(_samples(synth, 3), out, 2)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    with output_lock(out, what="clipforge data make-shards"):  # another make-shards is running
        with pytest.raises(FolderInUseError, match=r"in use by another clipforge data make-shards \(pid \d+"):
            write_shards(_samples(synth, 5, start=10), out, 2)
        root = synth.write_folder(tmp_path / "images", 3)
        argv = ["data", "make-shards", "--from-folder", str(root), "--out", str(out), "--no-progress"]
        assert cli(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is in use by another clipforge data make-shards" in err
    assert "write the shards to another folder" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before
    assert _assert_sizes_match(out) == {"shard-000000.tar": 2, "shard-000001.tar": 1}


def test_two_make_shards_processes_never_both_write(tmp_path, synth):
    """Two real processes started together into one folder: one writes, the other refuses (or both write one
    after the other); either way sizes.json matches the shards."""
    root = synth.write_folder(tmp_path / "images", 40)
    out = tmp_path / "out"
    argv = ["-m", "clipforge.cli.main", "data", "make-shards", "--from-folder", str(root), "--out", str(out)]
    runs = [
        subprocess.Popen(
            [os.sys.executable, *argv, "--samples-per-shard", str(n), "--no-progress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (3, 7)
    ]
    results = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
    for code, err in results:
        assert code == 0 or (code == 1 and "is in use by another clipforge data make-shards" in err), err
    _assert_sizes_match(out)


def test_temporaries_of_a_killed_run_are_removed_and_others_kept(tmp_path, synth):
    out = tmp_path / "out"
    out.mkdir()
    stale = [
        ".shard-000000.tar.4242.clipforge-partial.tmp",  # shard writer, killed mid-shard
        ".sizes.json.k3j4h5g6.clipforge-partial.tmp",  # atomic writer, killed mid-write
        ".shard-000001.tar.tmp-777",  # clipforge 0.1's shard temporaries
    ]
    kept = ["notes.tmp", ".keep.tmp", "shard-000009.tar.tmp-1"]
    for name in stale + kept:
        (out / name).write_bytes(b"")
    write_shards(_samples(synth, 2), out, 2)
    names = {p.name for p in out.iterdir()}
    assert names.isdisjoint(stale) and set(kept) <= names


def test_a_full_disk_mid_run_names_the_device_and_keeps_earlier_outputs(tmp_path, synth, monkeypatch):
    out = tmp_path / "out"
    write_shards(_samples(synth, 6), out, 2)  # an earlier run: shards 0-2 of 2 samples
    old = {n: (out / n).read_bytes() for n in ("shard-000001.tar", "shard-000002.tar")}
    calls = {"n": 0}
    original = tarfile.TarFile.addfile

    def addfile(self, info, fileobj=None):
        calls["n"] += 1
        if calls["n"] > 9:  # 3 samples of 3 members fit: the 4th sample (2nd shard of 3) hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    with pytest.raises(NoSpaceError) as raised:
        write_shards(_samples(synth, 6, start=100), out, 3)
    message = str(raised.value)
    assert f"no space left on the device mounted at {atomic.mount_point(out)}" in message
    assert "shard-000001.tar" in message and "MB needed" in message and "MB free" in message
    sizes = _assert_sizes_match(out)  # the new shard 0 (3 samples) and the old shards 1-2, each as it is
    assert sizes == {"shard-000000.tar": 3, "shard-000001.tar": 2, "shard-000002.tar": 2}
    assert {n: (out / n).read_bytes() for n in old} == old


def test_make_shards_reports_a_full_disk_in_one_line(tmp_path, synth, monkeypatch, capsys):
    def full(self, info, fileobj=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    root = synth.write_folder(tmp_path / "images", 3)
    argv = ["data", "make-shards", "--from-folder", str(root), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "no space left on the device mounted at" in err and "MB needed" in err
    assert not list((tmp_path / "out").glob("*.tar")) and not list((tmp_path / "out").glob(".*tmp*"))


def test_a_real_full_tmpfs(tmp_path, synth):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = mount / "out"
        write_shards(_samples(synth, 2), out, 2)
        before = (out / "shard-000000.tar").read_bytes()
        with pytest.raises(NoSpaceError, match=f"no space left on the device mounted at {mount}"):
            write_shards(_samples(synth, 8, start=10, pad=300_000), out, 8, prefix="big")
        assert (out / "shard-000000.tar").read_bytes() == before
        assert _assert_sizes_match(out) == {"shard-000000.tar": 2}
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_atomic_writes_report_a_full_disk_and_keep_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_bytes(b"old")

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(NoSpaceError, match=r"while writing .*config.json \(about 0.0 MB needed"):
        atomic_write_bytes(target, b"new" * 10)
    monkeypatch.undo()
    # torch.save reports a failed write as RuntimeError("... unexpected pos ...") with the OSError as context
    with pytest.raises(NoSpaceError, match="no space left on the device mounted at"):
        with atomic_open(target) as handle:
            handle.write(b"x" * 3_000_000)
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    with pytest.raises(RuntimeError, match="unrelated"):  # other failures pass through unchanged
        with atomic_open(target) as handle:
            raise RuntimeError("unrelated")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_non_utf8_file_names_are_written_with_their_bytes_recorded(tmp_path, synth, capsys):
    root = tmp_path / "images"
    root.mkdir()
    raw = os.fsencode(root) + b"/caf\xe9"  # Latin-1 bytes: not UTF-8
    with open(raw + b".png", "wb") as file:
        file.write(synth.image_bytes(5))
    with open(raw + b".txt", "wb") as file:
        file.write(b"a latin-1 name")
    (root / "plain.png").write_bytes(synth.image_bytes(6))
    (root / "plain.txt").write_text("a plain name")
    out = tmp_path / "out"
    argv = ["data", "make-shards", "--from-folder", str(root), "--out", str(out), "--no-progress"]
    assert cli(argv) == 0
    assert "wrote 2 samples in 1 shards" in capsys.readouterr().out
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
        metas = [json.loads(tar.extractfile(n).read().decode("utf-8")) for n in names if n.endswith(".json")]
    assert all(n.isascii() for n in names)
    latin = next(m for m in metas if m["caption"] == "a latin-1 name")
    assert latin["source"] == "caf\\xe9.png" and bytes.fromhex(latin["source_hex"]) == b"caf\xe9.png"
    plain = next(m for m in metas if m["caption"] == "a plain name")
    assert plain["source"] == "plain.png" and "source_hex" not in plain
