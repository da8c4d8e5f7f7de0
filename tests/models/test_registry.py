"""The architecture registry's names: -quickgelu variants only where open_clip publishes one."""

import pytest

import clipforge
from clipforge.models import ConfigError, get_model_config, list_models
from clipforge.models.registry import QUICKGELU_BASES, QUICKGELU_SUFFIX


def test_quickgelu_variants_are_exactly_open_clips():
    """A listed `-quickgelu` name <=> open_clip ships that config (for the bases clipforge has)."""
    open_clip = pytest.importorskip("open_clip")
    theirs = {n for n in open_clip.list_models() if n.endswith(QUICKGELU_SUFFIX)}
    bases = {n for n in list_models() if not n.endswith(QUICKGELU_SUFFIX) and "/" not in n}
    ours = {n for n in list_models() if n.endswith(QUICKGELU_SUFFIX)}
    assert ours == {n for n in theirs if n.removesuffix(QUICKGELU_SUFFIX) in bases}
    assert {n.removesuffix(QUICKGELU_SUFFIX) for n in theirs} >= QUICKGELU_BASES


@pytest.mark.parametrize("family", ["SigLIP", "EVA02", "convnext", "roberta", "xlm-roberta"])
def test_no_quickgelu_variant_for_families_without_one(family):
    quick = [n for n in list_models() if n.endswith(QUICKGELU_SUFFIX) and family.lower() in n.lower()]
    assert not quick


@pytest.mark.parametrize("name", ["convnext_base", "ViT-B-16-SigLIP", "EVA02-B-16", "tiny-siglip", "ViT-g-14"])
def test_quickgelu_on_a_base_without_one_is_an_error_naming_the_base(name):
    with pytest.raises(ConfigError, match=rf"{name}-quickgelu.*no QuickGELU variant.*Use '{name}'"):
        get_model_config(name + QUICKGELU_SUFFIX)
    with pytest.raises(ConfigError, match="no QuickGELU variant"):
        clipforge.create_model(name + QUICKGELU_SUFFIX)
    get_model_config(name)  # the base itself stays loadable


@pytest.mark.parametrize(
    "name", ["ViT-B-32-quickgelu", "RN50-quickgelu", "ViT-bigG-14-quickgelu", "tiny-vit-quickgelu"]
)
def test_explicit_quickgelu_names_still_load(name):
    cfg = get_model_config(name)
    assert cfg.vision.act == cfg.text.act == "quick_gelu"
    assert get_model_config(name.removesuffix(QUICKGELU_SUFFIX)).vision.act == "gelu"


def test_every_listed_name_loads_and_openai_names_use_quickgelu():
    for name in list_models():
        cfg = get_model_config(name)
        if "/" in name or name.endswith(QUICKGELU_SUFFIX):
            assert cfg.vision.act == "quick_gelu", name
