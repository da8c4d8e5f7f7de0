"""open_clip's most common snippets run unchanged with `import clipforge as open_clip`.

Each snippet below is open_clip code as its README (open_clip_torch 3.3.0 METADATA), its factory
docstrings and Hugging Face model cards show it, rewritten only by the module name in imports
(`import open_clip` -> `import clipforge as open_clip`, `from open_clip import` -> `from clipforge import`)
and by shrinking model names to clipforge's tiny test architecture ('ViT-B-32' -> 'tiny-vit', a model card's
hub id -> 'hf-hub:clipforge-test/tiny-vit'), because no real weights can be downloaded here.

Downloads go to a loopback hub (tests/support/hubserver.py, through HF_ENDPOINT) that serves a tiny
model in open_clip's hub layout. For the pretrained-tag snippets the test registers the tag
('tiny-vit', 'laion2b_s34b_b79k') in the pretrained table, pointing at that served repository; the snippet
text itself is untouched. All snippets run in one subprocess (HF_ENDPOINT must be set before
huggingface_hub is imported), each in a fresh namespace, and report success or the traceback.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import clipforge
from support.hubserver import FakeHub

HUB_REPO = "clipforge-test/tiny-vit"

SNIPPETS = {
    # README "Usage" (the first code block), model name shrunk.
    "readme_usage": """
        import torch
        from PIL import Image
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms('tiny-vit', pretrained='laion2b_s34b_b79k')
        model.eval()  # model in train mode by default, impacts some models with BatchNorm or stochastic depth active
        tokenizer = open_clip.get_tokenizer('tiny-vit')

        image = preprocess(Image.open("docs/CLIP.png")).unsqueeze(0)
        text = tokenizer(["a diagram", "a dog", "a cat"])

        with torch.no_grad(), torch.autocast("cuda"):
            image_features = model.encode_image(image)
            text_features = model.encode_text(text)
            image_features /= image_features.norm(dim=-1, keepdim=True)
            text_features /= text_features.norm(dim=-1, keepdim=True)

            text_probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)

        print("Label probs:", text_probs)  # prints: [[1., 0., 0.]]
        RESULT = text_probs.sum().item()
    """,
    # README "Pretrained models".
    "readme_list_pretrained": """
        import open_clip
        RESULT = open_clip.list_pretrained()
    """,
    # README "Loading models": pretrained also accepts local paths.
    "readme_local_path": """
        import open_clip
        # pretrained also accepts local paths
        model, _, preprocess = open_clip.create_model_and_transforms('tiny-vit', pretrained='local/model.bin')
        RESULT = type(model).__name__
    """,
    # Hugging Face model card (open_clip library tag), hub id shrunk.
    "model_card_hf_hub": """
        import torch
        import torch.nn.functional as F
        from PIL import Image
        from open_clip import create_model_from_pretrained, get_tokenizer

        model, preprocess = create_model_from_pretrained('hf-hub:clipforge-test/tiny-vit')
        tokenizer = get_tokenizer('hf-hub:clipforge-test/tiny-vit')

        image = preprocess(Image.open("docs/CLIP.png")).unsqueeze(0)
        labels_list = ["a dog", "a cat", "a donut", "a beignet"]
        text = tokenizer(labels_list, context_length=model.context_length)

        with torch.no_grad(), torch.cuda.amp.autocast():
            image_features = model.encode_image(image)
            text_features = model.encode_text(text)
            image_features = F.normalize(image_features, dim=-1)
            text_features = F.normalize(text_features, dim=-1)

            text_probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)

        zipped_list = list(zip(labels_list, [round(p.item(), 3) for p in text_probs[0]]))
        print("Label probabilities: ", zipped_list)
        RESULT = len(zipped_list)
    """,
    # open_clip's own zero-shot evaluation (open_clip_train/zero_shot.py).
    "zero_shot_classifier": """
        import torch
        import open_clip
        from open_clip import build_zero_shot_classifier, IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

        model, _, preprocess = open_clip.create_model_and_transforms('tiny-vit', pretrained='laion2b_s34b_b79k')
        tokenizer = open_clip.get_tokenizer('tiny-vit')
        with torch.no_grad():
            classifier = build_zero_shot_classifier(
                model,
                tokenizer=tokenizer,
                classnames=IMAGENET_CLASSNAMES[:50],
                templates=OPENAI_IMAGENET_TEMPLATES,
                num_classes_per_batch=10,
                device='cpu',
                use_tqdm=True,
            )
            images = torch.randn(4, 3, 32, 32)
            image_features = model.encode_image(images)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            logits = 100. * image_features @ classifier
        RESULT = list(logits.shape)
    """,
    # Training loop (open_clip_train/train.py, CLIP loss): the model output unpacks as a tuple.
    "forward_tuple_unpacking": """
        import torch
        import torch.nn.functional as F
        import open_clip

        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms('tiny-vit')
        tokenizer = open_clip.get_tokenizer('tiny-vit')
        image = torch.randn(4, 3, 32, 32)
        text = tokenizer(["a dog", "a cat", "a car", "a tree"])
        image_features, text_features, logit_scale = model(image, text)
        logits_per_image = logit_scale * image_features @ text_features.T
        logits_per_text = logits_per_image.T
        labels = torch.arange(4)
        total_loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        total_loss.backward()
        RESULT = total_loss.item()
    """,
    # LiT (README "Training" / open_clip_train main.py --lock-image --lock-text).
    "lit_locking": """
        import torch
        import open_clip

        model, _, _ = open_clip.create_model_and_transforms('tiny-vit', pretrained='laion2b_s34b_b79k')
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)
        model.lock_text_tower(unlocked_layers=1, freeze_layer_norm=True)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        RESULT = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    """,
    # open_clip.tokenize (the OpenAI-CLIP-style module function).
    "tokenize": """
        import torch
        import open_clip

        model = open_clip.create_model('tiny-vit', pretrained='laion2b_s34b_b79k')
        text = open_clip.tokenize(["a diagram", "a dog", "a cat"])
        with torch.no_grad():
            text_features = model.encode_text(text)
        RESULT = list(text_features.shape)
    """,
    # Discovering models and configs.
    "list_models_and_configs": """
        import open_clip

        models = open_clip.list_models()
        tags = open_clip.list_pretrained_tags_by_model('ViT-B-32')
        cfg = open_clip.get_model_config('ViT-B-32')
        RESULT = [len(models) > 0, 'laion2b_s34b_b79k' in tags, cfg['embed_dim'], cfg['vision_cfg']['patch_size']]
    """,
    # factory docstrings / CLIP_benchmark: precision, device, QuickGELU, model from pretrained without transform.
    "precision_and_options": """
        import torch
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(
            'tiny-vit', pretrained='laion2b_s34b_b79k', precision='bf16', device='cpu', cache_dir=None
        )
        model_qg = open_clip.create_model_from_pretrained(
            'tiny-vit', pretrained='laion2b_s34b_b79k', force_quick_gelu=True, return_transform=False
        )
        RESULT = [str(next(model.parameters()).dtype), model_qg.config.text.act]
    """,
}


def _rewrite(snippet: str) -> str:
    """The only rewrite allowed: the module name in import statements."""
    code = textwrap.dedent(snippet)
    return code.replace("import open_clip\n", "import clipforge as open_clip\n").replace(
        "from open_clip import", "from clipforge import"
    )


RUNNER = """
import json, sys, traceback, warnings
from clipforge.weights import pretrained

entry = pretrained.PretrainedWeights("tiny-vit", "laion2b_s34b_b79k", {repo!r})
pretrained.PRETRAINED = pretrained.PRETRAINED + (entry,)
snippets = json.load(open(sys.argv[1]))
results = {{}}
for name, code in snippets.items():
    namespace = {{"__name__": "__main__"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. autocast("cuda") on a machine without CUDA
            exec(compile(code, name, "exec"), namespace)
        results[name] = {{"ok": True, "result": namespace.get("RESULT")}}
    except Exception:
        results[name] = {{"ok": False, "error": traceback.format_exc()}}
json.dump(results, open(sys.argv[2], "w"), default=str)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("snippets")
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    clipforge.save_model(model, work / "repo", format="openclip")
    # A local open_clip checkpoint file as the README means it: a state dict in open_clip's names.
    (work / "local").mkdir()
    torch.save(load_file(work / "repo" / "open_clip_model.safetensors"), work / "local" / "model.bin")
    (work / "docs").mkdir()
    Image.new("RGB", (120, 90), (30, 160, 90)).save(work / "docs" / "CLIP.png")
    (work / "snippets.json").write_text(json.dumps({n: _rewrite(s) for n, s in SNIPPETS.items()}))
    (work / "runner.py").write_text(RUNNER.format(repo=HUB_REPO))
    with FakeHub({HUB_REPO: work / "repo"}) as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(work / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        proc = subprocess.run(
            [sys.executable, "runner.py", "snippets.json", "results.json"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "results.json").read_text())


def test_rewrite_touches_only_imports():
    for name, snippet in SNIPPETS.items():
        original, rewritten = textwrap.dedent(snippet).splitlines(), _rewrite(snippet).splitlines()
        changed = [(a, b) for a, b in zip(original, rewritten) if a != b]
        assert changed and all(a.lstrip().startswith(("import open_clip", "from open_clip")) for a, _ in changed), name


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_snippet_runs(results, name):
    outcome = results[name]
    assert outcome["ok"], outcome.get("error")


def test_snippet_results(results):
    assert abs(results["readme_usage"]["result"] - 1.0) < 1e-3  # probabilities of one image sum to 1
    assert ["ViT-B-32", "laion2b_s34b_b79k"] in results["readme_list_pretrained"]["result"]
    assert results["readme_local_path"]["result"] == "CLIP"
    assert results["model_card_hf_hub"]["result"] == 4
    assert results["zero_shot_classifier"]["result"] == [4, 50]
    assert results["tokenize"]["result"][0] == 3
    assert results["list_models_and_configs"]["result"] == [True, True, 512, 32]
    assert results["precision_and_options"]["result"] == ["torch.bfloat16", "quick_gelu"]
    trainable = results["lit_locking"]["result"]
    assert not any(n.startswith("visual.") for n in trainable)
    assert "text.text_projection" in trainable and "text.token_embedding.weight" not in trainable
