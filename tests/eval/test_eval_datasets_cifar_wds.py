"""CIFAR pickles (restricted unpickling) and WebDataset shards as evaluation sets."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipforge.data import write_shards
from clipforge.eval.datasets import DatasetNotFound, RetrievalSet, load_eval_dataset, restricted_load


def _cifar_batch(n, label_key, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {b"batch_label": b"x", label_key: [int(v) for v in rng.integers(0, 10, n)], b"data": data}


def _write(path, obj, protocol):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_release_layout(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(3, b"labels", i)
        _write(folder / name, batches[name], protocol)
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    _write(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol)
    test = load_eval_dataset("cifar10", tmp_path)
    assert test.classnames[:2] == ("airplane", "automobile") and len(test.templates) == 18
    assert test.templates[0] == "a photo of a {}." and test.labels == tuple(batches["test_batch"][b"labels"])
    image = test.load(2)
    expected = batches["test_batch"][b"data"][2].reshape(3, 32, 32).transpose(1, 2, 0)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected)
    train = load_eval_dataset("cifar10", folder, split="train")  # the release folder itself works as root
    assert len(train) == 15 and train.fingerprint != test.fingerprint


def test_cifar100_fine_labels_and_missing(tmp_path):
    folder = tmp_path / "cifar-100-python"
    batch = _cifar_batch(4, b"fine_labels", 0)
    batch[b"fine_labels"] = [0, 99, 50, 1]
    _write(folder / "test", batch, 2)
    ds = load_eval_dataset("cifar100", tmp_path)
    assert len(ds.classnames) == 100 and ds.classnames[99] == "worm" and ds.labels == (0, 99, 50, 1)
    assert ds.load(3).size == (32, 32)
    with pytest.raises(DatasetNotFound, match="cifar-100-python/") as info:
        load_eval_dataset("cifar100", tmp_path, split="train")
    assert "train" in str(info.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    payload = pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        restricted_load(payload)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_eval_dataset("cifar10", tmp_path)
    assert np.array_equal(restricted_load(pickle.dumps(np.arange(3))), np.arange(3))


def _png(colour):
    out = io.BytesIO()
    Image.new("RGB", (5, 4), colour).save(out, format="PNG")
    return out.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_wds_cls_with_classnames_file(tmp_path):
    shards = tmp_path / "test"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"{s}.tar", "w") as tar:
            for k in range(3):
                key = f"{s}{k:04d}"
                _add(tar, f"{key}.png", _png((k * 80, 0, 0)))
                _add(tar, f"{key}.cls", str((s + k) % 2).encode())
    (tmp_path / "classnames.txt").write_text("cat\ndog\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a photo of a {}.\nart of a {}.\n")
    ds = load_eval_dataset("wds", tmp_path)  # clip_benchmark layout: ROOT/test/*.tar
    assert ds.classnames == ("cat", "dog") and ds.templates == ("a photo of a {}.", "art of a {}.")
    assert ds.labels == (0, 1, 0, 1, 0, 1)
    assert np.asarray(ds.load(2))[0, 0].tolist() == [160, 0, 0]
    spec = load_eval_dataset("wds", str(shards / "{0..1}.tar"), classnames=["a", "b"])
    assert spec.classnames == ("a", "b") and spec.labels == ds.labels
    os.remove(tmp_path / "classnames.txt")
    with pytest.raises(ValueError, match="classnames"):
        load_eval_dataset("wds", str(shards / "0.tar"))


def test_wds_json_labels_and_text_retrieval(tmp_path):
    samples = [(_png((i, i, i)), f"grey {i}\nalso grey {i}", {"label": ["dark", "light"][i % 2]}) for i in range(4)]
    write_shards(samples, tmp_path / "shards", samples_per_shard=3)
    spec = str(tmp_path / "shards" / "shard-{000000..000001}.tar")
    cls = load_eval_dataset("wds", spec)
    assert cls.classnames == ("dark", "light") and cls.labels == (0, 1, 0, 1)
    ret = load_eval_dataset("wds", spec, task="retrieval")
    assert isinstance(ret, RetrievalSet) and ret.captions[3] == ("grey 3", "also grey 3")
    assert np.asarray(ret.load(3))[0, 0].tolist() == [3, 3, 3]
    with pytest.raises(DatasetNotFound, match="shard"):
        load_eval_dataset("wds", str(tmp_path / "shards" / "shard-{000000..000004}.tar"))


def test_wds_compressed_shard_kept_in_memory(tmp_path):
    with tarfile.open(tmp_path / "s.tar.gz", "w:gz") as tar:
        _add(tar, "a.png", _png((1, 2, 3)))
        _add(tar, "a.txt", b"a tiny square")
    ds = load_eval_dataset("wds", str(tmp_path / "s.tar.gz"))
    assert ds.captions == (("a tiny square",),) and np.asarray(ds.load(0))[0, 0].tolist() == [1, 2, 3]
