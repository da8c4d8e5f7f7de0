"""Writing shards (write_shards, `clipforge data make-shards`), reading them back, shard specs, and mixing."""

import json
import tarfile

import pytest
import torch

from clipforge.cli.data import main as data_main
from clipforge.data import DataConfig, SourceConfig, TrainData, expand_shards, write_shards
from clipforge.data.shardspec import expand_braces
from clipforge.models.config import ConfigError


def _by_caption(batches, tokenizer, synth):
    out = {}
    for b in batches:
        for image, tokens in zip(b.images, b.tokens):
            out[tokenizer.decode(tokens, skip_special_tokens=True).strip()] = image
    return out


def test_make_shards_round_trip_from_folder(tmp_path, synth, eval_transform, tokenizer, capsys):
    root = synth.write_folder(tmp_path / "images", 10)
    (root / "broken.png").write_bytes(b"not a png")
    (root / "broken.txt").write_text("a broken image")
    (root / "uncaptioned.png").write_bytes(synth.image_bytes(77))
    (root / "img0003.jpg").write_bytes(synth.image_bytes(3, "JPEG"))
    (root / "img0003.txt").write_text("a jpeg image")
    out = tmp_path / "shards"
    argv = ["make-shards", "--from-folder", str(root), "--out", str(out), "--samples-per-shard", "4", "--no-progress"]
    assert data_main(argv) == 0
    printed = capsys.readouterr()
    assert "wrote 11 samples in 3 shards" in printed.out and "skipped 2 bad inputs" in printed.out
    assert sorted(p.name for p in out.iterdir()) == [".lock", *(f"shard-{i:06d}.tar" for i in range(3)), "sizes.json"]
    assert json.loads((out / "sizes.json").read_text()) == {
        "shard-000000.tar": 4,
        "shard-000001.tar": 4,
        "shard-000002.tar": 3,
    }
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000000.png", "000000000.txt", "000000000.json"]

    spec = str(out / "shard-{000000..000002}.tar")
    from_shards = TrainData(DataConfig(sources=(SourceConfig("wds", spec),), batch_size=1), eval_transform, tokenizer)
    from_folder = TrainData(
        DataConfig(sources=(SourceConfig("folder", str(root)),), batch_size=1, max_bad_fraction=1),
        eval_transform,
        tokenizer,
    )
    assert from_shards.batches_per_epoch() == 11  # from sizes.json
    shards = _by_caption(from_shards.epoch(0), tokenizer, synth)
    folder = _by_caption(from_folder.epoch(0), tokenizer, synth)
    assert len(shards) == 11 and set(shards) == set(folder)
    for caption, image in shards.items():
        assert torch.equal(image, folder[caption])  # same bytes, same eval transform: same pixels


def test_make_shards_from_csv(tmp_path, synth, capsys):
    path = synth.write_csv(tmp_path, 5, sep="\t")
    with open(path, "a", encoding="utf-8") as file:
        file.write("images/missing.png\tgone\nimages/caption0.png\t\n")
    out = tmp_path / "out"
    argv = ["make-shards", "--from-csv", str(path), "--out", str(out), "--samples-per-shard", "10", "--no-progress"]
    assert data_main(argv) == 0
    assert "wrote 5 samples in 1 shards" in capsys.readouterr().out
    with tarfile.open(out / "shard-000000.tar") as tar:
        meta = json.load(tar.extractfile("000000004.json"))
    assert meta["caption"] == "caption 4" and meta["key"] == "000000004"


def test_make_shards_help_and_errors(capsys):
    with pytest.raises(SystemExit) as exited:
        data_main(["make-shards", "--help"])
    assert exited.value.code == 0
    assert "--samples-per-shard" in capsys.readouterr().out
    assert data_main([]) == 2
    assert data_main(["make-shards", "--from-folder", "/nonexistent", "--out", "x", "--samples-per-shard", "2"]) == 3
    assert "clipforge data: error: --from-folder /nonexistent: no such folder" in capsys.readouterr().err


def test_write_shards_is_atomic_and_keeps_other_sizes(tmp_path, synth):
    (tmp_path / "sizes.json").write_text(json.dumps({"old-000000.tar": 7}))
    samples = [(synth.image_bytes(i), f"c{i}", {"i": i}) for i in range(3)]
    paths = write_shards(samples, tmp_path, 2, prefix="new")
    assert [p.name for p in paths] == ["new-000000.tar", "new-000001.tar"]
    assert json.loads((tmp_path / "sizes.json").read_text()) == {
        "old-000000.tar": 7,
        "new-000000.tar": 2,
        "new-000001.tar": 1,
    }
    assert not list(tmp_path.glob(".*tmp*"))

    def failing():
        yield synth.image_bytes(0), "fine", None
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        write_shards(failing(), tmp_path / "partial", 5)
    assert [p.name for p in (tmp_path / "partial").iterdir()] == [".lock"]  # no half-written shard left behind


def test_brace_expansion():
    assert expand_braces("d/shard-{000000..000002}.tar") == [f"d/shard-{i:06d}.tar" for i in range(3)]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]
    assert expand_braces("a{x,y}b{1..2}") == ["axb1", "axb2", "ayb1", "ayb2"]
    assert expand_shards("s3://bucket/a-{0..1}.tar::http://host/b.tar") == [
        "s3://bucket/a-0.tar",
        "s3://bucket/a-1.tar",
        "http://host/b.tar",
    ]
    with pytest.raises(ConfigError):
        expand_shards("::")


def test_shard_directory_and_file_url(tmp_path, synth, eval_transform, tokenizer):
    synth.write_shard_set(tmp_path, shards=2, per_shard=3)
    assert expand_shards(str(tmp_path)) == [str(tmp_path / f"shard-00000{i}.tar") for i in range(2)]
    spec = "file://" + str(tmp_path / "shard-{000000..000001}.tar")
    data = TrainData(DataConfig(sources=(SourceConfig("wds", spec),), batch_size=2), eval_transform, tokenizer)
    assert sorted(synth.sample_id(c) for c in synth.captions(data.epoch(0), tokenizer)) == list(range(6))


def test_fsspec_url(tmp_path, synth, eval_transform, tokenizer):
    """A non-local URL goes through fsspec (here its in-memory filesystem)."""
    fsspec = pytest.importorskip("fsspec")
    synth.write_shard_set(tmp_path, shards=2, per_shard=3)
    memory = fsspec.filesystem("memory")
    for i in range(2):
        memory.pipe(f"/shards/shard-00000{i}.tar", (tmp_path / f"shard-00000{i}.tar").read_bytes())
    cfg = DataConfig(sources=(SourceConfig("wds", "memory://shards/shard-{000000..000001}.tar"),), batch_size=3)
    data = TrainData(cfg, eval_transform, tokenizer)
    assert sorted(synth.sample_id(c) for c in synth.captions(data.epoch(0), tokenizer)) == list(range(6))


def test_sources_mix_by_weight(tmp_path, synth, eval_transform, tokenizer):
    a = SourceConfig("csv", str(synth.write_csv(tmp_path / "a", 30, prefix="alpha")), weight=3.0)
    b = SourceConfig("csv", str(synth.write_csv(tmp_path / "b", 30, prefix="beta")), weight=1.0)
    cfg = DataConfig(sources=(a, b), batch_size=20, epoch_samples=1200)
    data = TrainData(cfg, eval_transform, tokenizer)
    names = synth.captions(data.epoch(0), tokenizer)
    share = sum(n.startswith("alpha") for n in names) / len(names)
    assert len(names) == 1200 and abs(share - 0.75) < 0.05  # binomial sd 0.0125
    again = synth.captions(data.epoch(0, start_batch=40), tokenizer)
    assert again == names[40 * 20 :]
    other = synth.captions(data.epoch(1), tokenizer)
    assert other != names
