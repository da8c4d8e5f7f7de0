"""clipforge's pretrained table against open_clip's: same hub repository, normalisation, resize and QuickGELU.

open_clip (installed for the tests only) lists each QuickGELU tag under both the base name and the
`-quickgelu` name; clipforge stores it once under the `-quickgelu` architecture, and `find_pretrained`
resolves the base name to it. So every open_clip (arch, tag) whose architecture clipforge builds must
resolve in clipforge to an entry with the identical hub id and preprocessing, whose architecture carries
`-quickgelu` exactly when open_clip's entry says `quick_gelu`; and every clipforge entry must exist in
open_clip's table (no invented repositories).
"""

import pytest

import clipforge
from clipforge.weights.pretrained import PRETRAINED, find_pretrained, tags_by_model

open_clip = pytest.importorskip("open_clip")
from open_clip.pretrained import get_pretrained_cfg  # noqa: E402


def _shared_pairs():
    models = set(clipforge.list_models())
    return [(arch, tag) for arch, tag in open_clip.list_pretrained() if arch in models]


def test_every_shared_pair_matches_open_clip():
    pairs = _shared_pairs()
    assert len(pairs) >= 90  # open_clip 3.3 lists 91 pairs for the architectures clipforge has
    problems = []
    for arch, tag in pairs:
        theirs = get_pretrained_cfg(arch, tag)
        ours = find_pretrained(arch, tag)
        if ours is None:
            problems.append(f"{arch}:{tag} missing")
            continue
        expected = (
            theirs["hf_hub"].rstrip("/"),
            tuple(theirs["mean"]),
            tuple(theirs["std"]),
            theirs["interpolation"],
            theirs["resize_mode"],
            bool(theirs.get("quick_gelu", False)),
        )
        got = (ours.hub_id, ours.mean, ours.std, ours.interpolation, ours.resize_mode, ours.arch.endswith("-quickgelu"))
        if got != expected:
            problems.append(f"{arch}:{tag}: clipforge {got} != open_clip {expected}")
    assert not problems, "\n".join(problems)


def test_every_clipforge_entry_is_in_open_clip():
    for entry in PRETRAINED:
        theirs = get_pretrained_cfg(entry.arch, entry.tag) or get_pretrained_cfg(
            entry.arch.removesuffix("-quickgelu"), entry.tag
        )
        assert theirs, f"{entry.arch}:{entry.tag} is not in open_clip's table"
        assert theirs["hf_hub"].rstrip("/") == entry.hub_id


def test_named_families_and_tag_lookup():
    assert find_pretrained("ViT-B-32", "metaclip_400m").arch == "ViT-B-32-quickgelu"
    assert find_pretrained("ViT-L-14", "dfn2b").hub_id == "apple/DFN2B-CLIP-ViT-L-14"
    assert find_pretrained("ViT-L-14", "dfn2b_s39b").arch == "ViT-L-14"  # the 39B run uses GELU
    assert find_pretrained("ViT-H-14", "dfn5b").resize_mode == "squash"
    assert find_pretrained("ViT-B-16", "CommonPool-L-clip-s1B-b8K") is not None  # open_clip's tag cleaning
    assert find_pretrained("ViT-B-16", "no_such_tag") is None
    for arch in ("ViT-B-16", "ViT-B-16-quickgelu", "RN50", "ViT-H-14"):
        assert sorted(tags_by_model(arch)) == sorted(open_clip.list_pretrained_tags_by_model(arch)), arch
    assert clipforge.list_pretrained(as_str=True)[0] == "RN50-quickgelu:openai"
