"""Model paths few-shot adapters need: image features before the last projection (ProLIP) and the text
tower run from token embeddings (CoOp / CoCoOp prompt learning)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.models import CLIP, get_model_config
from clipforge.text import tokenize
from support.tolerance import assert_close_rel

TINY = ["tiny-vit", "tiny-rn", "tiny-vit-attnpool", "tiny-siglip"]


def _model(name: str) -> CLIP:
    torch.manual_seed(0)
    model = CLIP(get_model_config(name)).eval()
    with torch.no_grad():  # ResNet blocks start as the identity (zero bn3 gains): give every branch a say
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _images(model: CLIP, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, model.image_size, model.image_size, generator=g)


# ---------------------------------------------------------------- pre-projection image features


@pytest.mark.parametrize("name", TINY)
def test_projecting_pre_projection_features_gives_encode_image(name):
    model = _model(name)
    images = _images(model)
    with torch.no_grad():
        pre = model.encode_image(images, project=False)  # (B, width')
        expected = model.encode_image(images, normalize=True)  # (B, D)
        actual = F.normalize(model.project_image(pre), dim=-1)
    width = model.config.vision.width * 32 if model.config.vision.is_resnet else model.visual.proj.shape[0]
    assert pre.shape == (3, width)
    assert_close_rel(actual, expected, 1e-6, f"{name}: normalize(project_image(pre))")


def test_vit_pre_projection_is_the_ln_post_class_token_and_proj_is_the_matrix():
    model = _model("tiny-vit")
    images = _images(model)
    with torch.no_grad():
        pre = model.encode_image(images, project=False)
        # Full-length reference: every token through every block (forward runs the last block for the class token)
        tokens = model.visual.transformer(model.visual.embed(images))  # (B, 1 + N, width)
        reference = model.visual.ln_post(tokens[:, 0])  # (B, width)
        projection = model.image_projection
        assert isinstance(projection, nn.Parameter) and projection.shape == (64, model.embed_dim)
        assert projection is model.visual.proj
        assert_close_rel(pre, reference, 1e-5, "ViT pre-projection feature")
        assert_close_rel(
            F.normalize(pre @ projection, dim=-1), model.encode_image(images, normalize=True), 1e-6, "pre @ proj"
        )


def test_resnet_pre_projection_is_the_input_of_attnpool_c_proj():
    model = _model("tiny-rn")
    images = _images(model)
    seen = []
    hook = model.visual.attnpool.c_proj.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            projected = model.encode_image(images)
            pre = model.encode_image(images, project=False)
    finally:
        hook.remove()
    assert len(seen) == 1, "project=False must skip c_proj"
    assert torch.equal(pre, seen[0])
    projection = model.image_projection
    assert projection is model.visual.attnpool.c_proj and projection.bias is not None
    with torch.no_grad():
        manual = pre @ projection.weight.T + projection.bias  # (B, D)
    assert_close_rel(manual, projected, 1e-5, "pre @ W^T + b")


def test_forward_tokens_unchanged_by_the_projection_split():
    for name in ("tiny-vit", "tiny-rn"):
        model = _model(name)
        images = _images(model)
        with torch.no_grad():
            pooled, _ = model.visual.forward_tokens(images)
            assert_close_rel(pooled, model.encode_image(images), 1e-5, f"{name}: forward_tokens pooled")


# ---------------------------------------------------------------- text from token embeddings


def _caption_tokens() -> torch.Tensor:
    return tokenize(["a dog.", "a photo of a very small red sports car on a street.", "two cats"])


@pytest.mark.parametrize("name", TINY)
def test_text_from_token_embeddings_equals_encode_text(name):
    model = _model(name)
    tokens = _caption_tokens()
    with torch.no_grad():
        expected = model.encode_text(tokens)
        embedded = model.text.token_embedding(tokens)  # (T, L, width)
        actual = model.encode_text_embeddings(embedded, tokens)
        assert_close_rel(actual, expected, 1e-6, f"{name}: embeddings path")
        normalized = model.encode_text_embeddings(embedded, tokens, normalize=True)
        assert_close_rel(normalized, model.encode_text(tokens, normalize=True), 1e-6, f"{name}: normalized")
        if model.config.text.pool_type in ("argmax", "eos"):
            positions = model.text.pool_positions(tokens)
            by_position = model.encode_text_embeddings(embedded, end_positions=positions)
            assert_close_rel(by_position, expected, 1e-6, f"{name}: end_positions path")


def test_embedding_path_trims_like_encode_text_and_matches_the_full_length():
    model = _model("tiny-vit")
    tokens = _caption_tokens()
    with torch.no_grad():
        full = model.text.forward_tokens(tokens)[0]  # all 77 positions computed
        embedded = model.text.token_embedding(tokens)
        assert_close_rel(model.encode_text_embeddings(embedded, tokens), full, 1e-5, "trimmed vs full length")
        # Embeddings shorter than the context (a prompt learner may build only what it needs) are taken too.
        short = tokens[:, :16]
        assert_close_rel(
            model.encode_text_embeddings(embedded[:, :16], short), full, 1e-5, "16-token embeddings vs full length"
        )


def test_coop_context_equal_to_embedded_template_gives_encode_text_of_the_template():
    """CoOp (Zhou et al. 2022): prompts "X X X X {class}." whose four placeholder embeddings are replaced by
    learnable context vectors; with the context set to the embedded words of "a photo of a", the prompt
    path must equal encode_text("a photo of a {class}.")."""
    model = _model("tiny-vit")
    classnames = ["dog", "hot air balloon", "sports car"]
    n_ctx = 4
    placeholder = tokenize([f"{' '.join(['X'] * n_ctx)} {c}." for c in classnames])  # (C, 77)
    template = tokenize([f"a photo of a {c}." for c in classnames])
    with torch.no_grad():
        embedded = model.text.token_embedding(placeholder)  # (C, 77, width)
        words = model.text.token_embedding(tokenize("a photo of a"))[0, 1 : 1 + n_ctx]  # (n_ctx, width)
    context = nn.Parameter(words.clone())
    prompts = torch.cat(
        [embedded[:, :1], context.expand(len(classnames), -1, -1), embedded[:, 1 + n_ctx :]], dim=1
    )  # (C, 77, width): start token, context, class name + "." + end token + padding
    features = model.encode_text_embeddings(prompts, placeholder, normalize=True)
    with torch.no_grad():
        expected = model.encode_text(template, normalize=True)
    assert_close_rel(features.detach(), expected, 1e-6, "CoOp prompt path vs encode_text(template)")
    # The context is learnable: a loss on the features reaches it.
    features.sum().backward()
    assert context.grad is not None and context.grad.abs().max() > 0


def test_embedding_path_refuses_bad_inputs_with_clear_errors():
    model = _model("tiny-vit")
    tokens = _caption_tokens()
    embedded = model.text.token_embedding(tokens).detach()
    with pytest.raises(ValueError, match="shape \\(batch, length, 32\\)"):
        model.encode_text_embeddings(embedded[..., :16], tokens)
    with pytest.raises(ValueError, match="tokens must have shape"):
        model.encode_text_embeddings(embedded, tokens[:2])
    with pytest.raises(ValueError, match="pass tokens \\(B, L\\) or end_positions"):
        model.encode_text_embeddings(embedded)
    with pytest.raises(ValueError, match="not both"):
        model.encode_text_embeddings(embedded, tokens, end_positions=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="must lie in"):
        model.encode_text_embeddings(embedded, end_positions=torch.tensor([1, 2, 77]))
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text_embeddings(torch.zeros(1, 78, 32), end_positions=torch.tensor([3]))
    siglip = _model("tiny-siglip")
    with pytest.raises(ValueError, match="pool_type 'last'"):
        siglip.encode_text_embeddings(siglip.text.token_embedding(tokens), end_positions=torch.tensor([1, 2, 3]))
