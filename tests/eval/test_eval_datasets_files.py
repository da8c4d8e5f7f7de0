"""Evaluation datasets from user files: class folders, ImageNet layout, CSV, Karpathy JSON; registry and errors."""

import csv
import json
import pickle

import pytest
from PIL import Image

from clipforge.eval.datasets import (
    ClassificationSet,
    DatasetNotFound,
    RetrievalSet,
    list_eval_datasets,
    load_eval_dataset,
)
from clipforge.image import ImageLoadError
from clipforge.zeroshot import get_templates, imagenet_classnames


def _image(path, colour=(200, 10, 10), size=(8, 6), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else 128).save(path)
    return path


def test_registry_lists_every_dataset():
    assert list_eval_datasets() == sorted(
        ["cifar10", "cifar100", "coco", "csv", "emoji", "fashion_mnist", "flickr30k", "folder", "imagenet",
         "openclipart", "textile", "tuxpaint", "wds"]
    )  # fmt: skip
    with pytest.raises(ValueError, match="known"):
        load_eval_dataset("nope", "/tmp")


def test_unknown_option_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="path_column"):
        load_eval_dataset("csv", tmp_path / "x.csv", colum="x")


def test_folder_classes_labels_and_load(tmp_path):
    _image(tmp_path / "golden_retriever" / "b.jpg")
    _image(tmp_path / "golden_retriever" / "a.png", mode="L")
    _image(tmp_path / "sea-lion" / "x" / "c.jpg")  # nested files count for their top class
    (tmp_path / "sea-lion" / "notes.txt").write_text("not an image")
    ds = load_eval_dataset("folder", tmp_path)
    assert isinstance(ds, ClassificationSet)
    assert ds.classnames == ("golden retriever", "sea lion")
    assert ds.labels == (0, 0, 1) and len(ds) == 3
    assert ds.templates == tuple(get_templates("simple"))
    image = ds.load(0)
    assert image.mode == "RGB" and image.size == (8, 6)
    with pytest.raises(IndexError):
        ds.load(3)
    # the fingerprint depends on the file list, not on the process
    assert load_eval_dataset("folder", tmp_path).fingerprint == ds.fingerprint
    _image(tmp_path / "sea-lion" / "d.jpg")
    assert load_eval_dataset("folder", tmp_path).fingerprint != ds.fingerprint


def test_folder_split_subfolder_and_bad_image(tmp_path):
    _image(tmp_path / "test" / "cat" / "1.jpg")
    (tmp_path / "test" / "dog").mkdir()
    (tmp_path / "test" / "dog" / "2.jpg").write_bytes(b"not a jpeg")
    ds = load_eval_dataset("folder", tmp_path, split="test")
    assert ds.classnames == ("cat", "dog") and ds.labels == (0, 1)
    with pytest.raises(ImageLoadError, match="2.jpg"):
        ds.load(1)


def test_folder_missing_names_layout(tmp_path):
    with pytest.raises(DatasetNotFound, match="CLASS_NAME") as info:
        load_eval_dataset("folder", tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value) and "'folder'" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DatasetNotFound, match="root="):
        load_eval_dataset("folder")


def test_imagenet_maps_sorted_wnids_to_clip_names(tmp_path):
    wnids = [f"n{i:08d}" for i in range(1000)]
    for wnid in wnids:
        (tmp_path / "val" / wnid).mkdir(parents=True)
    _image(tmp_path / "val" / wnids[0] / "ILSVRC2012_val_00000001.JPEG")
    _image(tmp_path / "val" / wnids[999] / "ILSVRC2012_val_00000002.JPEG")
    ds = load_eval_dataset("imagenet", tmp_path)
    names = imagenet_classnames()
    assert ds.classnames == tuple(names) and ds.labels == (0, 999)
    assert len(ds.templates) == 80 and ds.load(1).size == (8, 6)
    (tmp_path / "val" / wnids[5]).rmdir()
    with pytest.raises(DatasetNotFound, match="999 wnid folders"):
        load_eval_dataset("imagenet", tmp_path)


def test_csv_classification_relative_paths_and_columns(tmp_path):
    _image(tmp_path / "imgs" / "a.jpg")
    _image(tmp_path / "imgs" / "b.jpg")
    with open(tmp_path / "test.csv", "w", newline="") as file:
        csv.writer(file).writerows([["file", "cls"], ["imgs/a.jpg", "zebra"], ["imgs/b.jpg", "ant"]])
    with pytest.raises(ValueError, match="path_column"):
        load_eval_dataset("csv", tmp_path / "test.csv")
    ds = load_eval_dataset("csv", tmp_path, path_column="file", label_column="cls")  # root folder -> test.csv
    assert ds.classnames == ("ant", "zebra") and ds.labels == (1, 0)
    assert ds.load(0).size == (8, 6)


def test_csv_retrieval_groups_captions_by_path(tmp_path):
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    (tmp_path / "caps.tsv").write_text("path\tcaption\na.jpg\ta red box\nb.jpg\ta red card\na.jpg\tsomething red\n")
    ds = load_eval_dataset("csv", tmp_path / "caps.tsv")
    assert isinstance(ds, RetrievalSet)
    assert ds.captions == (("a red box", "something red"), ("a red card",))
    assert ds.load(1).size == (8, 6)


def _karpathy(tmp_path, name, filepath=None):
    entries = []
    for i, split in enumerate(["train", "test", "test", "val", "restval"]):
        entry = {"filename": f"{i}.jpg", "split": split, "sentences": [{"raw": f"img {i} cap {j} "} for j in range(5)]}
        if filepath:
            entry["filepath"] = filepath
        entries.append(entry)
    (tmp_path / f"dataset_{name}.json").write_text(json.dumps({"images": entries}))
    return entries


def test_flickr30k_karpathy_test_split(tmp_path):
    _karpathy(tmp_path, "flickr30k")
    for i in range(5):
        _image(tmp_path / "flickr30k-images" / f"{i}.jpg")
    ds = load_eval_dataset("flickr30k", tmp_path)
    assert len(ds) == 2 and ds.captions[0] == tuple(f"img 1 cap {j}" for j in range(5))
    assert ds.load(1).mode == "RGB"
    assert len(load_eval_dataset("flickr30k", tmp_path, split="restval")) == 1
    with pytest.raises(ValueError, match="split"):
        load_eval_dataset("flickr30k", tmp_path, split="dev")


def test_coco_filepath_and_missing_images(tmp_path):
    _karpathy(tmp_path, "coco", filepath="val2014")
    with pytest.raises(DatasetNotFound, match="val2014"):
        load_eval_dataset("coco", tmp_path)
    for i in range(5):
        _image(tmp_path / "val2014" / f"{i}.jpg")
    ds = load_eval_dataset("coco", tmp_path, split="val")
    assert len(ds) == 1 and ds.captions[0][4] == "img 3 cap 4"
    with pytest.raises(DatasetNotFound, match="dataset_coco.json"):
        load_eval_dataset("coco", tmp_path / "nowhere")


def test_sets_pickle_for_dataloader_workers(tmp_path):
    _image(tmp_path / "cat" / "1.jpg")
    ds = load_eval_dataset("folder", tmp_path)
    again = pickle.loads(pickle.dumps(ds))
    assert again == ds and again.load(0).size == (8, 6)
