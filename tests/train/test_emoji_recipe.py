"""The `emoji` recipe (the search demo's model): its variants, its sources and a model whose context fits every name."""

from __future__ import annotations

import pytest

import clipforge
from clipforge.data import SourceConfig
from clipforge.models.config import ConfigError
from clipforge.recipes import list_recipes, load_recipe
from clipforge.recipes.emoji import IMAGE_SIZE


def test_the_recipe_is_listed_and_trains_a_48px_clip_on_the_emoji_names():
    assert list_recipes()["emoji"].startswith("Pretrain a small CLIP on the Noto emoji collection")
    cfg = load_recipe("emoji")
    assert cfg.output_dir == "runs/emoji"
    assert cfg.data.sources == (SourceConfig(kind="emoji"),)
    assert cfg.eval.retrieval == SourceConfig(kind="emoji") and cfg.eval.every_steps == 100  # measured on its own data
    assert cfg.schedule.max_steps is None and cfg.data.batch_size == 256
    model = clipforge.create_model(cfg.model.name, **cfg.model.overrides)
    assert model.config.preprocess.size == IMAGE_SIZE == 48


def test_an_export_csv_trains_on_its_image_path_and_caption_columns():
    cfg = load_recipe("emoji", "runs/search_demo/emoji/captions.csv")
    (source,) = cfg.data.sources
    assert (source.kind, source.path) == ("csv", "runs/search_demo/emoji/captions.csv")
    assert (source.image_column, source.caption_column) == ("image_path", "caption")  # export-collection's columns
    assert cfg.eval.retrieval == source and cfg.output_dir == "runs/emoji_export"


def test_openclipart_is_mixed_in_only_when_asked_and_tiny_is_short():
    mixed = load_recipe("emoji", "openclipart")
    assert [s.kind for s in mixed.data.sources] == ["emoji", "openclipart"]
    assert mixed.data.epoch_samples is not None and mixed.eval.retrieval.kind == "emoji"
    assert all(s.kind != "openclipart" for s in load_recipe("emoji").data.sources)
    tiny = load_recipe("emoji", "tiny")
    assert tiny.schedule.max_steps == 20 and tiny.output_dir == "runs/emoji_tiny"
    with pytest.raises(ConfigError, match="unknown --arg 'huge'.*captions.csv"):
        load_recipe("emoji", "huge")


def test_no_emoji_name_is_cut_by_the_text_context():
    pytest.importorskip("emoji")
    from clipforge.collections.emoji import load_emoji

    cfg = load_recipe("emoji")
    context = cfg.model.overrides["text"]["context_length"]
    names = [item.name for item in load_emoji()]
    tokens = clipforge.get_tokenizer("tiny-vit", context_length=1000)(names)  # (N, 1000): no truncation
    longest = int((tokens != 0).sum(dim=1).max())  # with the start and end tokens
    assert longest <= context, f"the longest emoji name has {longest} tokens; context_length is {context}"
