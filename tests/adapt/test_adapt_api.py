"""The clipforge.adapt API: method registry, hyper-parameter checking, input validation, saved-folder errors,
and fitting from a CLIP model (text weights built from the class names)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import clipforge
import clipforge.adapt as adapt
from clipforge.adapt import FitContext, LabelledFeatures

NAMES = ("ok", "defect")


def _set(n: int = 4, d: int = 3, seed: int = 0) -> LabelledFeatures:
    g = torch.Generator().manual_seed(seed)
    return LabelledFeatures(F.normalize(torch.randn(n, d, generator=g), dim=-1), torch.arange(n) % 2, NAMES)


def _ctx(d: int = 3) -> FitContext:
    return FitContext(text_weights=F.normalize(torch.ones(d, 2) + torch.eye(d, 2), dim=0))


def test_list_methods_has_the_training_free_ones():
    assert {"zeroshot", "prototype", "nn1", "tip", "gda"} <= set(adapt.list_methods())
    assert adapt.hparam_defaults("tip")["alpha"] == 1.0 and adapt.hparam_defaults("tip")["beta"] == 5.5
    assert adapt.hparam_defaults("nn1") == {"temperature": 0.01}


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown adapt method 'tipp'.*gda.*nn1.*tip"):
        adapt.fit("tipp", _ctx(), _set())


def test_unknown_hparam_lists_valid_ones():
    pattern = r"unknown hyper-parameter\(s\) gamma for adapt method 'tip'.*alpha=1.0.*beta=5.5"
    with pytest.raises(ValueError, match=pattern):
        adapt.fit("tip", _ctx(), _set(), gamma=2.0)
    with pytest.raises(ValueError, match="valid: none"):
        adapt.fit("zeroshot", _ctx(), _set(), alpha=1.0)


def test_labelled_features_validation_names_the_field():
    feats = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="labels must be"):
        LabelledFeatures(feats, torch.zeros(3, dtype=torch.long), NAMES)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        LabelledFeatures(feats, torch.tensor([0, 1, 2, 0]), NAMES)
    with pytest.raises(ValueError, match="integer class indices"):
        LabelledFeatures(feats, torch.zeros(4), NAMES)
    with pytest.raises(ValueError, match=r"views must be \(V, N, D\)"):
        LabelledFeatures(feats, torch.zeros(4, dtype=torch.long), NAMES, views=torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="classnames is empty"):
        LabelledFeatures(feats, torch.zeros(4, dtype=torch.long), ())


def test_fit_checks_shapes_and_missing_classes():
    with pytest.raises(ValueError, match=r"text_weights are \(3, 2\), expected \(D, C\) = \(5, 2\)"):
        adapt.fit("tip", _ctx(3), _set(d=5))
    with pytest.raises(ValueError, match="same classnames"):
        other = LabelledFeatures(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), ("a", "b"))
        adapt.fit("tip", _ctx(), _set(), other)
    one_class = LabelledFeatures(_set().features, torch.zeros(4, dtype=torch.long), NAMES)
    with pytest.raises(ValueError, match="every class; none for: defect"):
        adapt.fit("prototype", _ctx(), one_class)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        adapt.fit("nn1", _ctx(), _set(), temperature=0.0)


def test_logits_reject_wrong_feature_width():
    adapter = adapt.fit("prototype", _ctx(), _set())
    with pytest.raises(ValueError, match=r"expects image features \(N, 3\), got shape \(2, 4\)"):
        adapter.logits(torch.zeros(2, 4))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter.json: no adapter config"):
        adapt.load(tmp_path)
    folder = adapt.fit("tip", _ctx(), _set()).save(tmp_path / "a")
    config = json.loads((folder / "adapter.json").read_text())
    assert config["method"] == "tip" and config["classnames"] == list(NAMES) and config["hparams"]["beta"] == 5.5
    (folder / "adapter.json").write_text(json.dumps({**config, "method": "nope"}))
    with pytest.raises(ValueError, match="adapter.json: unknown adapter method 'nope'"):
        adapt.load(folder)
    (folder / "adapter.json").write_text(json.dumps({**config, "version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        adapt.load(folder)
    (folder / "adapter.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter.json: not valid JSON"):
        adapt.load(folder)
    (folder / "adapter.json").write_text(json.dumps(config))
    (folder / "adapter.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="adapter.safetensors: not a readable safetensors file"):
        adapt.load(folder)


def test_load_rejects_state_of_another_method(tmp_path):
    tip = adapt.fit("tip", _ctx(), _set()).save(tmp_path / "tip")
    config = json.loads((tip / "adapter.json").read_text())
    (tip / "adapter.json").write_text(json.dumps({**config, "method": "gda"}))
    with pytest.raises(ValueError, match="does not rebuild a 'gda' adapter"):
        adapt.load(tip)


def test_fit_from_a_clip_model_builds_text_weights_from_classnames():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").eval()
    d = model.text_projection.shape[1] if hasattr(model, "text_projection") else None
    ctx = adapt.context_for(model, NAMES)
    d = ctx.text_weights.shape[0] if d is None else d
    assert ctx.text_weights.shape == (d, 2)
    torch.testing.assert_close(ctx.text_weights.norm(dim=0), torch.ones(2))
    assert ctx.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    train = _set(n=6, d=d)
    adapter = adapt.fit("zeroshot", model, train)
    torch.testing.assert_close(adapter.weight, ctx.text_weights)
