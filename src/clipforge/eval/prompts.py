"""Zero-shot class-weight variants beyond template ensembling.

- Template files: one template per line with a `{}` for the class name, `#` comments
  (`clipforge.zeroshot.get_templates` reads them).
- CuPL (Pratt et al. 2023, "What does a platypus look like?"): each class is described by free-form
  sentences (typically written by a language model), stored as JSON {classname: [descriptions]}. A
  class weight is the mean of the L2-normalised embeddings of its descriptions, renormalised: the
  semantics of `clipforge.zeroshot.build_class_weights`, with descriptions in place of templated
  prompts. With `templates`, the templated prompts join the descriptions and every text weighs the
  same ("CuPL + e" in the paper).
- CHiLS (Novack et al. 2023, "CHiLS: Zero-shot image classification with hierarchical label sets"):
  each parent class is replaced by its subclasses; images are classified among the subclasses and the
  prediction mapped back to the parent ("max"), or subclass probabilities are summed per parent
  ("sum"). With `parent_logits`, each subclass probability is first multiplied by its parent's
  probability, the paper's reweighting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.clip import CLIP
from ..safeio import read_text_file
from ..zeroshot import build_class_weights, get_templates


def load_templates_file(path: str | Path) -> list[str]:
    """Templates from a text file: one per line with exactly one `{}`; blank lines and `#` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"templates file not found: {path}")
    # An absolute path never collides with the names of the built-in sets that get_templates also accepts.
    return get_templates(path.resolve())


def load_class_descriptions(path: str | Path) -> dict[str, list[str]]:
    """CuPL descriptions from a JSON file {classname: [description, ...]}, validated."""
    path = Path(path)
    try:
        data = json.loads(read_text_file(path, what="descriptions file"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{classname: [descriptions]}}")
    out = {}
    for name, texts in data.items():
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{path}: class {name!r} needs a non-empty list of non-empty strings")
        out[name] = [t.strip() for t in texts]
    return out


@torch.no_grad()
def class_weights_from_descriptions(
    model: CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    descriptions: Mapping[str, Sequence[str]],
    templates: Sequence[str] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """(embed_dim, num_classes) unit-norm class weights from each class's descriptions (and templated prompts)."""
    if not classnames:
        raise ValueError("class_weights_from_descriptions needs at least one class name")
    missing = [c for c in classnames if not descriptions.get(c)]
    if missing:
        raise ValueError(f"no descriptions for classes {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    texts: list[str] = []
    owner: list[int] = []  # class index of each text
    for i, name in enumerate(classnames):
        class_texts = list(descriptions[name]) + ([t.format(name) for t in templates] if templates else [])
        texts += class_texts
        owner += [i] * len(class_texts)
    # The identity template "{}" makes build_class_weights return each text's own unit-norm embedding.
    per_text = build_class_weights(model, tokenizer, texts, ["{}"], batch_size).T  # (P, D)
    owner_t = torch.tensor(owner, device=per_text.device)
    sums = torch.zeros(len(classnames), per_text.shape[1], device=per_text.device).index_add_(0, owner_t, per_text)
    return F.normalize(sums, dim=-1).T.contiguous()  # (D, C); the mean's direction is the sum's


def build_hierarchy(mapping: Mapping[str, Sequence[str]]) -> tuple[list[str], torch.Tensor, list[str]]:
    """(subclass_names (S,), sub_to_parent (S,) long, parent_names (P,)) from {parent: [subclasses]}.

    Parents keep the mapping's order, subclasses follow their parent; a parent with no subclasses
    stands for itself (its own name becomes its one subclass), as CHiLS does.
    """
    if not mapping:
        raise ValueError("build_hierarchy needs at least one parent class")
    parent_names = list(mapping)
    subclass_names: list[str] = []
    parents: list[int] = []
    for p, parent in enumerate(parent_names):
        subs = list(mapping[parent]) or [parent]
        subclass_names += subs
        parents += [p] * len(subs)
    return subclass_names, torch.tensor(parents, dtype=torch.long), parent_names


def hierarchical_predict(
    logits_subclasses: torch.Tensor,
    sub_to_parent: torch.Tensor,
    num_parents: int,
    mode: str = "max",
    parent_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Parent predictions (N,) long from subclass logits (N, S) and sub_to_parent (S,) long.

    "max": the parent of the best-scoring subclass. "sum": the parent whose subclasses' softmax
    probabilities add up highest (so logits should carry the model's logit scale). parent_logits
    (N, P), if given, reweights each subclass probability by its parent's softmax probability before
    either rule. Ties go to the lowest index, as `argmax`.
    """
    if mode not in ("max", "sum"):
        raise ValueError(f"mode must be 'max' or 'sum', got {mode!r}")
    if logits_subclasses.dim() != 2:
        raise ValueError(f"logits_subclasses must have shape (N, S), got {tuple(logits_subclasses.shape)}")
    sub_to_parent = sub_to_parent.to(logits_subclasses.device).long()
    if sub_to_parent.shape != (logits_subclasses.shape[1],):
        raise ValueError(
            f"sub_to_parent must have shape ({logits_subclasses.shape[1]},), got {tuple(sub_to_parent.shape)}"
        )
    if sub_to_parent.numel() and (int(sub_to_parent.min()) < 0 or int(sub_to_parent.max()) >= num_parents):
        raise ValueError(f"sub_to_parent must lie in [0, {num_parents})")
    if parent_logits is None:
        if mode == "max":
            return sub_to_parent[logits_subclasses.argmax(dim=1)]
        scores = logits_subclasses.float().softmax(dim=1)  # (N, S)
    else:
        if parent_logits.shape != (logits_subclasses.shape[0], num_parents):
            raise ValueError(f"parent_logits must have shape (N, {num_parents}), got {tuple(parent_logits.shape)}")
        parent_probs = parent_logits.to(logits_subclasses.device).float().softmax(dim=1)  # (N, P)
        scores = logits_subclasses.float().softmax(dim=1) * parent_probs[:, sub_to_parent]  # (N, S)
    if mode == "max":
        return sub_to_parent[scores.argmax(dim=1)]
    per_parent = torch.zeros(scores.shape[0], num_parents, dtype=scores.dtype, device=scores.device)
    return per_parent.index_add_(1, sub_to_parent, scores).argmax(dim=1)  # (N, P) -> (N,)
