"""CLIP.forward's CLIPOutput: attribute, key and open_clip tuple access agree, and wrappers keep it intact."""

import copy

import pytest
import torch
import torch.utils._pytree as pytree

import clipforge
from clipforge.models import CLIPOutput
from support.tolerance import assert_close_rel


def _inputs(model, batch=2, texts=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, model.image_size, model.image_size, generator=g)
    tokens = torch.zeros(texts, model.context_length, dtype=torch.long)
    for row in range(texts):
        n = 2 + row
        tokens[row, 0] = 49406
        tokens[row, 1 : n + 1] = torch.randint(1, 49000, (n,), generator=g)
        tokens[row, n + 1] = 49407
    return images, tokens


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: clipforge.create_model(name).eval() for name in ("tiny-vit", "tiny-siglip")}


def test_clip_model_unpacks_into_three_tensors_in_open_clip_order(models):
    model = models["tiny-vit"]
    images, tokens = _inputs(model)
    with torch.no_grad():
        out = model(images, tokens)
        image_features, text_features, logit_scale = out  # a dict would bind its three key strings here
    assert isinstance(out, CLIPOutput) and isinstance(out, dict)
    assert image_features.shape == (2, model.embed_dim) and text_features.shape == (3, model.embed_dim)
    assert image_features is out.image_features is out["image_features"] is out[0]
    assert text_features is out.text_features is out["text_features"] is out[1]
    assert logit_scale is out.logit_scale is out["logit_scale"] is out[2] is out[-1]
    assert len(out) == 3 and out.logit_bias is None and "logit_bias" not in out
    assert out.get("logit_bias") is None and out.get("logit_bias", 0) == 0
    with pytest.raises(IndexError):
        out[3]
    torch.testing.assert_close(logit_scale, model.logit_scale.exp())


def test_siglip_model_unpacks_into_four_with_the_bias_last(models):
    model = models["tiny-siglip"]
    images, tokens = _inputs(model)
    with torch.no_grad():
        out = model(images, tokens)
    image_features, text_features, logit_scale, logit_bias = out
    assert len(out) == 4 and "logit_bias" in out
    assert logit_bias is out.logit_bias is out["logit_bias"] is out[3] is out[-1] is out.get("logit_bias")
    assert image_features is out.image_features and text_features is out.text_features
    assert logit_scale is out.logit_scale
    assert out[:2] == (image_features, text_features) and out.to_tuple() == tuple(out)
    assert list(reversed(out)) == [logit_bias, logit_scale, text_features, image_features]


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-siglip"])
def test_key_view_is_a_dict_of_the_computed_entries(models, name):
    model = models[name]
    images, tokens = _inputs(model)
    with torch.no_grad():
        out = model(images, tokens)
    keys = ["image_features", "text_features", "logit_scale"] + (["logit_bias"] if name == "tiny-siglip" else [])
    assert list(out.keys()) == keys
    assert [k for k, _ in out.items()] == keys and all(v is getattr(out, k) for k, v in out.items())
    assert all(a is b for a, b in zip(out.values(), out))  # values() and iteration agree on a full forward
    assert list(dict(out)) == keys and list({**out}) == keys  # dict() and ** use the keys, not iteration
    assert all(getattr(out, k) is out[k] is out.get(k) for k in keys)


def test_iteration_yields_values_and_indexing_by_them_is_a_clear_error(models):
    model = models["tiny-vit"]
    images, tokens = _inputs(model)
    with torch.no_grad():
        out = model(images, tokens)
    assert all(isinstance(v, torch.Tensor) for v in out)
    with pytest.raises(TypeError, match=r"yields its values in open_clip's tuple order.*\.keys\(\)"):
        for key in out:  # code written for a dict
            out[key]
    with pytest.raises(KeyError, match="has no field 'logits'"):
        out["logits"]


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-siglip"])
def test_one_tower_forward_leaves_the_other_position_none(models, name):
    model = models[name]
    images, tokens = _inputs(model)
    with torch.no_grad():
        full = model(images, tokens)
        image_only = model(images)
        text_only = model(tokens=tokens)
    width = 4 if name == "tiny-siglip" else 3
    image_features, text_features, *scalars = image_only
    assert text_features is None and len(image_only) == width and len(scalars) == width - 2
    assert_close_rel(image_features, full.image_features, rel=1e-6, what="image features, image-only forward")
    assert "text_features" not in image_only and image_only.text_features is None
    assert image_only.get("text_features") is None
    with pytest.raises(KeyError, match="'text_features' was not computed: forward got no tokens"):
        image_only["text_features"]
    image_features, text_features, *_ = text_only
    assert image_features is None and text_only[0] is None and "image_features" not in text_only
    assert_close_rel(text_features, full.text_features, rel=1e-6, what="text features, text-only forward")
    with pytest.raises(KeyError, match="forward got no images"):
        text_only["image_features"]


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-siglip"])
def test_get_logits_unchanged(models, name):
    """get_logits equals the logits written out from the towers' normalised features."""
    model = models[name]
    images, tokens = _inputs(model)
    with torch.no_grad():
        per_image, per_text = model.get_logits(images, tokens)
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)  # (2, D)
        txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)  # (3, D)
        expected = model.logit_scale.exp() * img @ txt.T  # (2, 3)
        if model.logit_bias is not None:
            expected = expected + model.logit_bias
    assert per_image.shape == (2, 3) and torch.equal(per_text, per_image.T)
    assert_close_rel(per_image, expected, rel=1e-5, what="logits_per_image")


def test_output_dict_keyword_is_accepted_and_changes_nothing(models):
    model = models["tiny-siglip"]
    images, tokens = _inputs(model)
    with torch.no_grad():
        as_dict = model(images, tokens, output_dict=True)
        as_tuple = model(images, tokens, output_dict=False)
    assert type(as_dict) is type(as_tuple) is CLIPOutput
    assert list(as_dict.keys()) == list(as_tuple.keys())
    assert all(torch.equal(a, b) for a, b in zip(as_dict, as_tuple))


def test_construction_rejects_unknown_fields_and_a_missing_scale():
    scale = torch.tensor(1.0)
    with pytest.raises(KeyError, match=r"no field\(s\) \['logits'\]"):
        CLIPOutput(logit_scale=scale, logits=scale)
    with pytest.raises(ValueError, match="needs a logit_scale"):
        CLIPOutput(image_features=torch.zeros(1, 2))
    assert list(CLIPOutput({"logit_scale": scale}, logit_bias=None).keys()) == ["logit_scale"]


def test_pytree_and_copy_keep_the_type():
    out = CLIPOutput(image_features=torch.ones(2, 4), logit_scale=torch.tensor(2.0), logit_bias=torch.tensor(-1.0))
    leaves, spec = pytree.tree_flatten(out)
    assert len(leaves) == 3  # the computed tensors are children, not one opaque leaf
    doubled = pytree.tree_map(lambda t: t * 2, out)
    assert type(doubled) is CLIPOutput and list(doubled.keys()) == list(out.keys())
    assert doubled.text_features is None and doubled.logit_bias.item() == -2.0
    again = copy.deepcopy(out)
    assert type(again) is CLIPOutput and list(again.keys()) == list(out.keys()) and len(again) == 4


def _ddp_step_with_unused_parameter_search() -> None:
    """One DDP forward/backward of a tiny SigLIP; every DDP object dies when this returns (see the test)."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-siglip").train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    images, tokens = _inputs(model, batch=3)
    out = ddp(images, tokens)
    assert type(out) is CLIPOutput and len(out) == 4
    image_features, text_features, logit_scale, logit_bias = out
    logits = logit_scale * image_features @ text_features.T + logit_bias  # (3, 3)
    logits.logsumexp(-1).mean().backward()
    assert model.logit_bias.grad is not None and model.visual.conv1.weight.grad.abs().sum() > 0


def test_ddp_with_unused_parameter_search_keeps_the_output(tmp_path):
    """find_unused_parameters makes DDP flatten and rebuild the output with pytree; gradients still flow.

    The DDP model lives in a helper so that its Reducer is freed while the process group is still up: freeing a
    Reducer after `destroy_process_group` joins the gloo group's worker threads in its destructor, which can
    deadlock (seen once in CI: the test process hung in ~ProcessGroupGloo).
    """
    import gc

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _ddp_step_with_unused_parameter_search()
    finally:
        gc.collect()
        dist.destroy_process_group()


@pytest.mark.slow
def test_torch_compile_fullgraph_returns_the_same_output(models):
    """The whole forward, output object included, compiles into one graph (~30 s) and matches eager."""
    model = models["tiny-siglip"]
    images, tokens = _inputs(model)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got, ref = compiled(images, tokens), model(images, tokens)
    assert type(got) is CLIPOutput and list(got.keys()) == list(ref.keys()) and len(got) == 4
    for key in ("image_features", "text_features"):  # inductor reorders sums
        assert_close_rel(got[key], ref[key], rel=1e-4, what=f"compiled {key}")
    assert torch.equal(got.logit_scale, ref.logit_scale) and torch.equal(got.logit_bias, ref.logit_bias)
