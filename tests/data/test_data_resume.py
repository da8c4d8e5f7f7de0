"""Determinism and exact resume: epoch(e, start_batch=k) yields exactly epoch(e)[k:], for every source kind,
with num_workers 0 and 2; ranks get disjoint, complete shares; workers split the shards."""

import pytest

from clipforge.data import DataConfig, SourceConfig, TrainData
from clipforge.data.plan import EpochJob
from clipforge.image import build_transform
from clipforge.models.config import PreprocessConfig


def _data(source, transform, tokenizer, **options):
    cfg = DataConfig(sources=(source,), **{"batch_size": 4, "seed": 3, **options})
    rank = options.pop("rank", 0) if "rank" in options else 0
    return TrainData(cfg, transform, tokenizer, rank=rank)


def _check_resume(data, epoch, starts, synth):
    full = list(data.epoch(epoch))
    assert len(full) == data.batches_per_epoch()
    synth.assert_same_batches(list(data.epoch(epoch)), full)  # deterministic
    for k in starts:
        synth.assert_same_batches(list(data.epoch(epoch, start_batch=k)), full[k:])
    return full


@pytest.mark.parametrize("kind", ["csv", "folder"])
def test_map_sources_resume_exactly_and_do_not_depend_on_workers(kind, tmp_path, synth, train_transform, tokenizer):
    path = synth.write_csv(tmp_path, 26) if kind == "csv" else synth.write_folder(tmp_path, 26)
    source = SourceConfig(kind, str(path))
    data = TrainData(DataConfig(sources=(source,), batch_size=4, seed=3), train_transform, tokenizer)
    assert data.batches_per_epoch() == 6  # 26 // 4, remainder dropped
    full = _check_resume(data, 1, [1, 5, 6], synth)
    assert len(set(synth.captions(full, tokenizer))) == 24  # each sample at most once per epoch
    other = list(data.epoch(2))
    assert not all((a.images == b.images).all() for a, b in zip(full, other))  # epochs differ
    workers = TrainData(DataConfig(sources=(source,), batch_size=4, seed=3, num_workers=2), train_transform, tokenizer)
    synth.assert_same_batches(list(workers.epoch(1)), full)
    synth.assert_same_batches(list(workers.epoch(1, start_batch=3)), full[3:])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_wds_resumes_exactly(num_workers, tmp_path, synth, train_transform, tokenizer):
    spec = synth.write_shard_set(tmp_path, shards=4, per_shard=6)
    source = SourceConfig("wds", spec, shuffle_buffer=5)
    cfg = DataConfig(sources=(source,), batch_size=3, seed=1, num_workers=num_workers)
    data = TrainData(cfg, train_transform, tokenizer)
    assert data.batches_per_epoch() == 8  # 24 samples (counted from the tar headers) // 3
    starts = [1, 4] if num_workers else [1, 2, 5, 7]
    full = _check_resume(data, 0, starts, synth)
    names = synth.captions(full, tokenizer)
    assert len(set(names)) == len(names) == 24  # one pass: every sample once


def test_wds_with_workers_interleaves_worker_batches(tmp_path, synth, train_transform, tokenizer):
    """Batch j of worker w is global batch j * W + w, and the workers read disjoint shards."""
    spec = synth.write_shard_set(tmp_path, shards=4, per_shard=6)
    cfg = DataConfig(sources=(SourceConfig("wds", spec, shuffle_buffer=4),), batch_size=3, num_workers=2)
    data = TrainData(cfg, train_transform, tokenizer)
    loaded = list(data.epoch(0))
    job = EpochJob(cfg, data.sources, data.assembler, 0, 0, 1, 2, 0, data.batches_per_epoch())
    per_worker = [list(job.batches(0)), list(job.batches(1))]
    interleaved = [per_worker[g % 2][g // 2] for g in range(len(loaded))]
    synth.assert_same_batches(loaded, interleaved)
    shard_of = [{synth.sample_id(c) // 6 for c in synth.captions(batches, tokenizer)} for batches in per_worker]
    assert shard_of[0].isdisjoint(shard_of[1]) and len(shard_of[0]) == len(shard_of[1]) == 2


def test_fashion_mnist_resumes_exactly(tokenizer, synth):
    train_transform = build_transform(PreprocessConfig(size=28), train=True)  # native size: no resize
    source = SourceConfig("fashion_mnist")
    data = TrainData(DataConfig(sources=(source,), batch_size=2000, seed=5), train_transform, tokenizer)
    assert data.batches_per_epoch() == 30
    full = _check_resume(data, 3, [17, 29], synth)
    workers = TrainData(
        DataConfig(sources=(source,), batch_size=2000, seed=5, num_workers=2), train_transform, tokenizer
    )
    synth.assert_same_batches(list(workers.epoch(3, start_batch=27)), full[27:])


def test_stream_of_map_source_resumes_exactly(tmp_path, synth, train_transform, tokenizer):
    """epoch_samples turns a map-style source into per-worker streams (passes over seeded permutations)."""
    source = SourceConfig("csv", str(synth.write_csv(tmp_path, 10)))
    for workers in (0, 2):
        cfg = DataConfig(sources=(source,), batch_size=4, epoch_samples=28, num_workers=workers)
        data = TrainData(cfg, train_transform, tokenizer)
        assert data.batches_per_epoch() == 7
        _check_resume(data, 0, [3], synth)


def test_ranks_get_disjoint_complete_shares(tmp_path, synth, eval_transform, tokenizer):
    csv_source = SourceConfig("csv", str(synth.write_csv(tmp_path / "csv", 21)))
    wds_source = SourceConfig("wds", synth.write_shard_set(tmp_path / "wds", shards=4, per_shard=5), shuffle_buffer=3)
    for source, expected in ((csv_source, 20), (wds_source, 20)):
        cfg = DataConfig(sources=(source,), batch_size=5)
        ranks = [TrainData(cfg, eval_transform, tokenizer, rank=r, world_size=2) for r in range(2)]
        assert [r.batches_per_epoch() for r in ranks] == [2, 2]  # same count on every rank
        seen = [synth.captions(r.epoch(4), tokenizer) for r in ranks]
        assert len(seen[0]) == len(seen[1]) == 10
        assert set(seen[0]).isdisjoint(seen[1])
        assert len(set(seen[0]) | set(seen[1])) == expected


def test_resume_arguments_are_checked(tmp_path, synth, eval_transform, tokenizer):
    data = TrainData(
        DataConfig(sources=(SourceConfig("folder", str(synth.write_folder(tmp_path, 8))),), batch_size=4),
        eval_transform,
        tokenizer,
    )
    assert list(data.epoch(0, start_batch=2)) == []
    with pytest.raises(ValueError, match="start_batch"):
        data.epoch(0, start_batch=3)
    with pytest.raises(ValueError, match="rank"):
        TrainData(data.cfg, eval_transform, tokenizer, rank=2, world_size=2)
