"""Files the data layer opens itself are regular files read with a size cap: a FIFO never blocks a job, a device
such as /dev/zero is never read, an oversized file or tar member is a counted bad input, never a memory blow-up.

Each test runs under an alarm, so a regression fails in seconds instead of hanging the suite. Devices are
represented by /dev/null (refused for being a device, like /dev/zero, but harmless if a regression read it: a
regression reading /dev/zero would exhaust the machine's memory rather than fail the test)."""

import io
import json
import os
import signal
import tarfile
from collections import Counter

import pytest

from clipforge.cli.main import main as cli
from clipforge.data import DataConfig, SourceConfig, TrainData, tarsamples, write_shards
from clipforge.data.bad import BadSample
from clipforge.data.tarsamples import iter_shard
from clipforge.models.config import ConfigError
from clipforge.safeio import FileTooLargeError, NotRegularFileError, open_regular_file, read_regular_file


class Hung(BaseException):
    """Raised by the alarm: a BaseException, so that no `except OSError` / `except Exception` in the code under
    test can turn it into a counted bad sample (TimeoutError is an OSError)."""


@pytest.fixture(autouse=True)
def no_hang():
    def blocked(signum, frame):
        raise Hung("blocked for 20 s: a FIFO was probably opened for reading")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_safeio_opens_only_regular_files_and_caps_reads(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError, match=r"pipe.jpg.*FIFO \(named pipe\), not a regular image"):
        open_regular_file(fifo, what="image")
    with pytest.raises(NotRegularFileError, match="a device"):
        read_regular_file("/dev/zero")
    with pytest.raises(IsADirectoryError):
        read_regular_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing")
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 1000)
    assert read_regular_file(data, max_bytes=1000) == b"x" * 1000
    with pytest.raises(FileTooLargeError, match=r"1,000 bytes, over the limit of 999 bytes"):
        read_regular_file(data, max_bytes=999)
    assert len(read_regular_file(data, max_bytes=None)) == 1000


def test_make_shards_skips_fifos_devices_and_oversized_files(tmp_path, synth, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(synth.image_bytes(1))
    os.mkfifo(images / "pipe.jpg")
    (images / "big.png").write_bytes(synth.image_bytes(2) + b"\0" * (2 * 2**20))  # valid PNG, 2 MiB of trailer
    table = tmp_path / "data.csv"
    table.write_text(
        "filepath,title\nimages/good.png,good\nimages/pipe.jpg,a fifo\n/dev/null,a device\nimages/big.png,too big\n"
    )
    out = tmp_path / "out"
    argv = ["data", "make-shards", "--from-csv", str(table), "--out", str(out), "--no-progress", "--max-image-mb", "1"]
    assert cli(argv) == 0
    captured = capsys.readouterr()
    assert "wrote 1 samples in 1 shards" in captured.out and "skipped 3 bad inputs" in captured.out
    assert "pipe.jpg: a FIFO (named pipe), not a regular image" in captured.err
    assert "/dev/null: a device, not a regular image" in captured.err
    assert "big.png: image of 2,0" in captured.err and "over the limit of 1,048,576 bytes" in captured.err
    assert json.loads((out / "sizes.json").read_text()) == {"shard-000000.tar": 1}


def test_make_shards_from_a_folder_with_a_fifo_caption(tmp_path, synth, capsys):
    root = synth.write_folder(tmp_path / "images", 4)
    (root / "img0002.txt").unlink()
    os.mkfifo(root / "img0002.txt")
    argv = ["data", "make-shards", "--from-folder", str(root), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli(argv) == 0
    captured = capsys.readouterr()
    assert "wrote 3 samples" in captured.out and "skipped 1 bad inputs" in captured.out
    assert "img0002.png: cannot read caption" in captured.err and "FIFO" in captured.err


def test_training_counts_fifos_and_devices_as_bad_samples(tmp_path, synth, eval_transform, tokenizer):
    root = synth.write_folder(tmp_path / "images", 8)
    (root / "img0002.txt").unlink()
    os.mkfifo(root / "img0002.txt")  # a caption that would block
    (root / "img0004.png").unlink()
    os.mkfifo(root / "img0004.png")  # an image that would block
    cfg = DataConfig(sources=(SourceConfig("folder", str(root)),), batch_size=4, max_bad_fraction=1.0)
    data = TrainData(cfg, eval_transform, tokenizer)
    batches = list(data.epoch(0))
    assert len(batches) == 2
    counted = {os.path.basename(name) for name in data.bad_counts}
    assert counted == {"img0002.png", "img0004.png"}

    table = tmp_path / "devices.csv"
    table.write_text(f"filepath,title\n/dev/null,a device\n{root / 'img0000.png'},fine\n")
    cfg = DataConfig(sources=(SourceConfig("csv", str(table)),), batch_size=2, max_bad_fraction=1.0)
    data = TrainData(cfg, eval_transform, tokenizer)
    assert len(list(data.epoch(0))) == 1
    assert set(data.bad_counts) == {"/dev/null"}


def test_a_fifo_named_like_a_shard_is_a_bad_shard(tmp_path):
    fifo = tmp_path / "shard-000000.tar"
    os.mkfifo(fifo)
    items = list(iter_shard(str(fifo)))
    assert len(items) == 1 and isinstance(items[0], BadSample)
    assert "not a regular shard" in items[0].reason
    with pytest.raises(ConfigError, match=r"not a regular file: .*shard-000000.tar; a shard must be a .tar file"):
        TrainData(DataConfig(sources=(SourceConfig("wds", str(fifo)),), batch_size=1, epoch_samples=1), None, None)


def test_oversized_tar_members_are_bad_samples_and_never_read(tmp_path, synth, monkeypatch, eval_transform, tokenizer):
    members = [m for i in range(4) for m in synth.sample_members(i)]
    members[3] = ("000000001.png", synth.image_bytes(1) + b"\0" * 5000)  # sample 1's image: over the cap below
    shard = synth.write_tar(tmp_path / "shard-000000.tar", members)
    monkeypatch.setattr(tarsamples, "MAX_MEMBER_BYTES", 4000)
    read_sizes = []
    original = tarfile.ExFileObject.read if hasattr(tarfile, "ExFileObject") else None
    if original is not None:
        monkeypatch.setattr(tarfile.ExFileObject, "read", lambda self, *a: read_sizes.append(1) or original(self, *a))
    items = list(iter_shard(str(shard)))
    bad = [item for item in items if isinstance(item, BadSample)]
    assert len(items) == 4 and len(bad) == 1
    assert "sample '000000001': member(s) ['png'] over 4,000 bytes, not read" in bad[0].reason
    if original is not None:
        assert len(read_sizes) == 11  # 4 samples x 3 members, less the oversized one
    cfg = DataConfig(sources=(SourceConfig("wds", str(shard), shuffle_buffer=0),), batch_size=1, epoch_samples=3)
    data = TrainData(cfg, eval_transform, tokenizer)
    batches = list(data.epoch(0))
    assert Counter(n for b in batches for n in b.bad) == {str(shard): 1}


def test_write_shards_caps_image_bytes(tmp_path, synth):
    skipped = []
    samples = [(synth.image_bytes(0), "small", None), (synth.image_bytes(1) + b"\0" * 4096, "large", None)]
    paths = write_shards(samples, tmp_path, 10, max_image_bytes=4000, on_skip=lambda n, r: skipped.append((n, r)))
    expected = f"ValueError: {len(samples[1][0]):,} bytes, over max_image_bytes=4,000"
    assert [reason for _, reason in skipped] == [expected]
    with tarfile.open(paths[0]) as tar:
        assert json.load(io.BytesIO(tar.extractfile("000000000.json").read()))["caption"] == "small"
