"""loss.kind="classifier": fine-tuning the image tower against the fixed zero-shot head (FLYP / WiSE-FT)."""

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.data import DataConfig, SourceConfig
from clipforge.models.config import ConfigError
from clipforge.train.classifier import (
    HEAD_FILE,
    CaptionLabelError,
    ClassifierHead,
    HeadSpec,
    classifier_loss,
    lock_for_classifier,
    resolve_head_spec,
)
from clipforge.train.config import (
    CheckpointConfig,
    LogConfig,
    LossConfig,
    ModelSpec,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)
from clipforge.train.loop import build_model, seed_everything, train
from clipforge.train.step import run_classifier_step
from clipforge.zeroshot import ZeroShotClassifier
from support.pairs import write_recipe
from support.tolerance import assert_close_rel

CLASSES = ("red", "green", "blue")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}
CAPTION_TEMPLATES = ("a {} thing", "{}")
CLASS_TEMPLATES = ("a photo of a {}.", "a {} picture.")


def _image(cls: str, i: int) -> Image.Image:
    """A learnable picture: the class colour in a block whose position varies with i, on grey."""
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    x0, y0 = (i * 7) % 16, (i * 5) % 16
    for x in range(x0, x0 + 16):
        for y in range(y0, y0 + 16):
            image.putpixel((x, y), COLOURS[cls])
    return image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    rows = []
    for i in range(48):
        cls = CLASSES[i % 3]
        name = f"img_{i:03d}.png"
        _image(cls, i).save(root / name)
        rows.append((name, CAPTION_TEMPLATES[(i // 3) % 2].format(cls)))
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return root


def _config(out, dataset, **changes) -> TrainConfig:
    base = TrainConfig(
        output_dir=str(out),
        seed=1,
        model=ModelSpec(name="tiny-vit"),
        data=DataConfig(sources=(SourceConfig(kind="csv", path=str(dataset / "train.csv")),), batch_size=12, seed=2),
        optim=OptimConfig(lr=1e-3, weight_decay=0.1),
        schedule=ScheduleConfig(epochs=10, max_steps=12, warmup_steps=2),
        loss=LossConfig(
            kind="classifier", classes=CLASSES, class_templates=CLASS_TEMPLATES, caption_templates=CAPTION_TEMPLATES
        ),
        checkpoint=CheckpointConfig(every_steps=100, keep_last=1),
        logging=LogConfig(every_steps=1, progress=False, plot=False),
    )
    return base.replace(**changes)


def _spec() -> HeadSpec:
    return HeadSpec(CLASSES, CLASS_TEMPLATES, CAPTION_TEMPLATES)


def _eval_set(dataset, model):
    preprocess = clipforge.get_preprocess(model)
    with (dataset / "train.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    images = torch.stack([preprocess(Image.open(dataset / r["filepath"])) for r in rows])  # (N, 3, H, W)
    labels = torch.tensor([CLASSES.index(r["title"].split()[-2] if " " in r["title"] else r["title"]) for r in rows])
    return images, labels


@torch.no_grad()
def _ce_and_accuracy(model, head, images, labels) -> tuple[float, float]:
    model.eval()
    out = model(images)
    logits = out.logit_scale * out.image_features @ head.weights.T  # (N, C)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def test_classifier_loss_equals_hand_computation():
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(5, 8, generator=gen), dim=-1)  # (B, D)
    head = F.normalize(torch.randn(3, 8, generator=gen), dim=-1)  # (C, D)
    labels = torch.tensor([0, 2, 1, 1, 0])
    scale = torch.tensor(14.0)
    logits = [[float(scale) * sum(float(features[b, d] * head[c, d]) for d in range(8)) for c in range(3)]
              for b in range(5)]
    expected = sum(
        -logits[b][labels[b]] + torch.logsumexp(torch.tensor(logits[b], dtype=torch.float64), 0).item()
        for b in range(5)
    ) / 5
    got = classifier_loss(features, scale, head, labels)
    assert_close_rel(got.double().reshape(1), torch.tensor([expected], dtype=torch.float64), 1e-5, "classifier CE")
    with pytest.raises(ValueError, match="head"):
        classifier_loss(features, scale, head[:, :4], labels)


def test_trainer_learns_and_never_touches_the_text_tower(tmp_path, dataset):
    cfg = _config(tmp_path / "run", dataset)
    seed_everything(cfg.seed)
    initial = build_model(cfg)  # the same initial weights the trainer builds (seeded alike)
    trainable = {n for n, p in initial.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("visual.") for n in trainable)  # DDP sees the image tower only
    tokenizer = clipforge.get_tokenizer(initial)
    head0 = ClassifierHead.build(initial, tokenizer, _spec())
    images, labels = _eval_set(dataset, initial)
    ce_before, acc_before = _ce_and_accuracy(initial, head0, images, labels)

    result = train(cfg)
    tuned = clipforge.load_model(result.model_dir)
    stored = ClassifierHead.load(tmp_path / "run" / "checkpoints" / HEAD_FILE, _spec(), tokenizer)
    assert torch.equal(stored.weights, head0.weights)  # the head of the initial model, stored as built
    ce_after, acc_after = _ce_and_accuracy(tuned, head0, images, labels)
    print(f"classifier fine-tuning: CE {ce_before:.3f} -> {ce_after:.3f}, accuracy {acc_before:.3f} -> {acc_after:.3f}")
    assert ce_after < 0.7 * ce_before
    assert acc_after >= max(acc_before + 0.2, 0.9)

    before, after = initial.state_dict(), tuned.state_dict()
    text_keys = [k for k in before if k.startswith("text.")] + ["logit_scale"]
    assert len(text_keys) > 5
    for key in text_keys:
        assert torch.equal(before[key], after[key]), f"{key} changed: the text tower must stay locked"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))

    # The fine-tuned model is still a CLIP whose zero-shot classifier over the same classes is the head.
    zeroshot = ZeroShotClassifier(tuned.eval(), tokenizer, CLASSES, CLASS_TEMPLATES)
    with torch.no_grad():
        out = tuned(images)
        head_logits = out.logit_scale * out.image_features @ head0.weights.T
    assert_close_rel(zeroshot.logits(images), head_logits, 1e-5, "zero-shot logits vs head logits")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in records if "loss" in r)


def test_accumulation_gives_the_full_batch_gradient(dataset):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    lock_for_classifier(model)
    head = ClassifierHead.build(model, clipforge.get_tokenizer(model), _spec()).weights
    images, labels = _eval_set(dataset, model)
    images, labels = images[:10], labels[:10]

    def grads(micro):
        model.zero_grad(set_to_none=True)
        result = run_classifier_step(model, micro, head, contextlib.nullcontext)
        assert result.finite
        return result.loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_one, one = grads([(images, labels)])
    loss_two, two = grads([(images[:6], labels[:6]), (images[6:], labels[6:])])  # unequal sizes: weights matter
    assert_close_rel(torch.tensor([loss_two]), torch.tensor([loss_one]), 1e-5, "accumulated loss")
    assert set(one) == set(two) and all(n.startswith("visual.") for n in one)
    scale = max(g.abs().max().item() for g in one.values())
    for name in one:
        assert_close_rel(two[name], one[name], 1e-4, f"grad {name}", scale=scale)


def test_unknown_caption_names_the_caption_and_fields():
    model = clipforge.create_model("tiny-vit")
    tokenizer = clipforge.get_tokenizer(model)
    head = ClassifierHead.build(model, tokenizer, _spec())
    labels = head.labels_for(tokenizer(["a blue thing", "red", "green"]))
    assert labels.tolist() == [2, 0, 1]
    with pytest.raises(CaptionLabelError, match=r"'a purple thing'.*loss\.caption_templates.*loss\.classes"):
        head.labels_for(tokenizer(["red", "a purple thing"]))


def test_ambiguous_caption_templates_are_refused():
    model = clipforge.create_model("tiny-vit", text={"context_length": 4})
    tokenizer = clipforge.get_tokenizer(model)
    spec = HeadSpec(CLASSES, CLASS_TEMPLATES, ("a photo of the {}",))  # cut to "<sot> a photo <eot>" for all
    with pytest.raises(ConfigError, match="same caption tokens"):
        ClassifierHead.build(model, tokenizer, spec)


def test_resume_reads_the_stored_head(tmp_path, dataset, monkeypatch):
    cfg = _config(tmp_path / "run", dataset, schedule=ScheduleConfig(epochs=10, max_steps=4, warmup_steps=1))
    first = train(cfg, stop_after_steps=2)
    assert first.interrupted
    path = tmp_path / "run" / "checkpoints" / HEAD_FILE
    stored = path.read_bytes()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a resumed run must read its stored head, not rebuild it from the trained model")

    monkeypatch.setattr(ClassifierHead, "build", no_rebuild)
    second = train(cfg)
    assert second.state.step == 4 and not second.interrupted
    assert path.read_bytes() == stored
    other = cfg.replace(loss=LossConfig(kind="classifier", classes=("red", "green", "cyan"),
                                        class_templates=CLASS_TEMPLATES, caption_templates=CAPTION_TEMPLATES))
    with pytest.raises(ConfigError, match="loss.classes"):
        train(other.replace(schedule=ScheduleConfig(epochs=10, max_steps=6)))


def test_config_validation():
    with pytest.raises(ConfigError, match="loss.kind"):
        LossConfig(kind="softmax")
    with pytest.raises(ConfigError, match=r"loss.class_templates.*exactly one"):
        LossConfig(kind="classifier", classes=("a",), class_templates=("no placeholder",))
    with pytest.raises(ConfigError, match=r"loss.caption_templates.*exactly one"):
        LossConfig(kind="classifier", classes=("a",), caption_templates=("{} {}",))
    with pytest.raises(ConfigError, match="more than once"):
        LossConfig(kind="classifier", classes=("a", "b", "a"))
    with pytest.raises(ConfigError, match=r"loss.classes\[1\] is empty"):
        LossConfig(kind="classifier", classes=("a", " "))
    with pytest.raises(ConfigError, match="loss.classes"):
        LossConfig(kind="classifier", classes="abc")
    csv_data = DataConfig(sources=(SourceConfig(kind="csv", path="x.csv"),))
    with pytest.raises(ConfigError, match="set loss.classes"):
        resolve_head_spec(TrainConfig(data=csv_data, loss=LossConfig(kind="classifier")))
    with pytest.raises(ConfigError, match="model.teacher"):
        resolve_head_spec(TrainConfig(model=ModelSpec(teacher="tiny-vit:none"), loss=LossConfig(kind="classifier")))


def test_defaults_follow_the_data():
    from clipforge.data import FASHION_MNIST_CLASSES, FASHION_TEST_TEMPLATES, FASHION_TRAIN_TEMPLATES

    spec = resolve_head_spec(TrainConfig(loss=LossConfig(kind="classifier")))
    assert spec == HeadSpec(FASHION_MNIST_CLASSES, FASHION_TEST_TEMPLATES, FASHION_TRAIN_TEMPLATES)
    own = SourceConfig(kind="fashion_mnist", templates=("the {}",))
    spec = resolve_head_spec(TrainConfig(data=DataConfig(sources=(own,)), loss=LossConfig(kind="classifier")))
    assert spec.caption_templates == ("the {}",)
    csv_data = DataConfig(sources=(SourceConfig(kind="csv", path="x.csv"),))
    spec = resolve_head_spec(TrainConfig(data=csv_data, loss=LossConfig(kind="classifier", classes=("a", "b"))))
    assert spec == HeadSpec(("a", "b"), ("a photo of a {}.",), ("{}",))


def test_ddp_trains_the_image_tower_only(tmp_path, dataset):
    """Two gloo processes: DDP sees only the image tower (the locked text tower never runs); both ranks agree."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    recipe = write_recipe(tmp_path / "recipe.py", dataset / "train.csv", 6, 'epochs=4, max_steps=4, kind="constant"')
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={port}", "-m", "clipforge.cli.main", "train", str(recipe), "--arg", str(tmp_path / "o"),
        "--loss.kind=classifier", '--loss.classes=["red", "green", "blue"]',
        '--loss.caption_templates=["a {} thing", "{}"]', "--seed=1",
    ]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seed_everything(1)
    initial = clipforge.create_model("tiny-vit")
    tuned = clipforge.load_model(tmp_path / "o" / "model")
    before, after = initial.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("text.") or k == "logit_scale")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
