"""Bad samples are skipped, replaced and counted per shard/file; too many of them raise DataError naming the worst."""

import re
import tarfile
from collections import Counter

import pytest

from clipforge.data import DataConfig, DataError, SourceConfig, TrainData
from clipforge.data.sources import FolderSource


def _broken_shard_set(root, synth):
    good = [m for i in range(12) for m in synth.sample_members(i)]
    synth.write_tar(root / "shard-000000.tar", good)
    jpeg = synth.image_bytes(99, "JPEG", size=(40, 30))
    broken = [m for i in range(12, 16) for m in synth.sample_members(i)]
    broken += [("000000100.jpg", b"\xff\xd8 not a jpeg at all"), ("000000100.txt", b"corrupt image")]
    broken += [m for i in range(16, 18) for m in synth.sample_members(i)]
    broken += [("000000101.jpg", jpeg[: len(jpeg) // 2]), ("000000101.txt", b"truncated image")]
    broken += synth.sample_members(102, caption="   ")  # empty caption
    broken += [(n, d) for n, d in synth.sample_members(103) if not n.endswith(".txt")]  # missing caption
    broken += [("000000104.png", synth.image_bytes(104)), ("000000104.txt", b"\xff\xfe bad utf-8")]
    broken += [m for i in range(18, 20) for m in synth.sample_members(i)]
    synth.write_tar(root / "shard-000001.tar", broken)
    return root / "shard-000000.tar", root / "shard-000001.tar"


def test_bad_samples_are_skipped_and_counted_by_shard(tmp_path, synth, train_transform, tokenizer):
    clean, broken = _broken_shard_set(tmp_path, synth)
    spec = str(tmp_path / "shard-{000000..000001}.tar")
    # No shuffle buffer and exactly the 22 samples with an image: one pass, each bad sample met once.
    cfg = DataConfig(sources=(SourceConfig("wds", spec, shuffle_buffer=0),), batch_size=2, epoch_samples=22)
    data = TrainData(cfg, train_transform, tokenizer)
    batches = list(data.epoch(0))
    assert len(batches) == 11 and all(b.images.shape == (2, 3, 12, 12) for b in batches)
    total = Counter()
    for b in batches:
        total.update(b.bad)
    # corrupt jpg, truncated jpg, empty caption, missing caption, non-UTF-8 caption
    assert total == {str(broken): 5}
    assert data.bad_counts == {str(broken): 5}
    good = {synth.sample_id(c) for c in synth.captions(batches, tokenizer)}
    assert good <= set(range(20))
    synth.assert_same_batches(list(data.epoch(0, start_batch=6)), batches[6:])


def test_bad_files_of_map_sources_are_replaced(tmp_path, synth, train_transform, tokenizer, monkeypatch):
    root = synth.write_folder(tmp_path / "images", 12)
    (root / "img0000.png").write_bytes(b"not an image")
    (root / "img0002.txt").unlink()
    (root / "img0004.txt").write_text("  \n")
    cfg = DataConfig(sources=(SourceConfig("folder", str(root)),), batch_size=4, max_bad_fraction=1.0)
    data = TrainData(cfg, train_transform, tokenizer)
    reads: Counter = Counter()  # every read of a file, primary or replacement: each read of a bad one must count
    original_read = FolderSource.read

    def counting_read(self, index):
        reads[re.sub(r".*/", "", self.paths[index])] += 1
        return original_read(self, index)

    monkeypatch.setattr(FolderSource, "read", counting_read)
    batches = list(data.epoch(0))
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    counted = {re.sub(r".*/", "", name): n for name, n in data.bad_counts.items()}
    bad_names = ("img0000.png", "img0002.png", "img0004.png")
    assert counted == {name: reads[name] for name in bad_names}  # all three, each as often as it was drawn
    assert all(counted[name] >= 1 for name in bad_names)
    ids = {synth.sample_id(c) for c in synth.captions(batches, tokenizer)}
    assert ids.isdisjoint({0, 2, 4})
    synth.assert_same_batches(list(data.epoch(0, start_batch=1)), batches[1:])


def test_truncated_shard_counts_and_continues(tmp_path, synth, eval_transform, tokenizer):
    spec = synth.write_shard_set(tmp_path, shards=2, per_shard=8)
    first = tmp_path / "shard-000000.tar"
    with tarfile.open(first) as tar:  # cut inside the image of sample 3: samples 0-2 stay whole
        cut = next(m.offset_data for m in tar.getmembers() if m.name == "000000003.png") + 100
    first.write_bytes(first.read_bytes()[:cut])
    # One pass over both shards: 3 + 8 good samples; the cut loses the rest of shard 0, counted once.
    cfg = DataConfig(sources=(SourceConfig("wds", spec, shuffle_buffer=0),), batch_size=1, epoch_samples=11)
    batches = list(TrainData(cfg, eval_transform, tokenizer).epoch(0))
    bad = Counter()
    for b in batches:
        bad.update(b.bad)
    assert bad == {str(first): 1}
    assert sorted(synth.sample_id(c) for c in synth.captions(batches, tokenizer)) == [0, 1, 2, *range(8, 16)]


def test_too_many_bad_samples_raise_naming_the_worst_shard(tmp_path, synth, eval_transform, tokenizer):
    for s in range(3):
        members = [m for i in range(s * 40, s * 40 + 40) for m in synth.sample_members(i)]
        if s == 1:  # 15 corrupt images in shard 1, 2 empty captions in shard 2
            members += [(f"{900 + i:09d}.png", b"garbage") for i in range(15)]
            members += [(f"{900 + i:09d}.txt", b"x") for i in range(15)]
        if s == 2:
            members += synth.sample_members(950, caption="") + synth.sample_members(951, caption="")
        synth.write_tar(tmp_path / f"shard-{s:06d}.tar", sorted(members))
    spec = str(tmp_path / "shard-{000000..000002}.tar")
    cfg = DataConfig(sources=(SourceConfig("wds", spec, shuffle_buffer=20),), batch_size=10)
    data = TrainData(cfg, eval_transform, tokenizer)
    with pytest.raises(DataError) as raised:
        for _ in data.epoch(0):
            pass
    message = str(raised.value)
    assert "max_bad_fraction=0.05" in message
    assert re.search(r"worst: \S*shard-000001\.tar \(\d+\)", message), message
    loose = DataConfig(sources=cfg.sources, batch_size=10, max_bad_fraction=0.5)
    assert len(list(TrainData(loose, eval_transform, tokenizer).epoch(0))) == 13


def test_a_shard_set_without_usable_samples_fails(tmp_path, synth, eval_transform, tokenizer):
    synth.write_tar(tmp_path / "shard-000000.tar", [("000000000.png", b"junk"), ("000000001.txt", b"lonely caption")])
    cfg = DataConfig(
        sources=(SourceConfig("wds", str(tmp_path / "shard-000000.tar")),),
        batch_size=1,
        epoch_samples=4,
        max_bad_fraction=1.0,
    )
    with pytest.raises(DataError, match="no usable sample"):
        list(TrainData(cfg, eval_transform, tokenizer).epoch(0))
