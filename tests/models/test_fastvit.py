"""FastViT / MCi MobileCLIP (MobileCLIP-S1/S2, MobileCLIP2-S0/S2/S3/S4): parity with open_clip's timm `fastvit_mci*`
towers on small random configs (a 4-stage MCi0-2 form and a 5-stage MCi3/4 form with LayerNorm2d), the fused
(`reparameterize`) form against the training form, the named architectures against open_clip's configs, export back
to open_clip, refusals, and training (backward, grad checkpointing, torch.compile, locking).

Parity bar: max abs diff <= 1e-4 on L2-normalised fp32 features, random weights and random BatchNorm statistics
(measured: 0 for the training form, ~1e-7 after reparameterisation).
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import clipforge
from clipforge.models import CLIP, ConfigError, get_model_config
from clipforge.models.config import VisionConfig
from clipforge.weights import openclip_mobileclip
from clipforge.weights.families import UnsupportedFamilyError, refuse_state_dict
from clipforge.weights.openclip import config_from_openclip
from support.tolerance import assert_close_rel

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

TOL = 1e-4
SMALL_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "no_causal_mask": True}
NAMES = ["MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP2-S3", "MobileCLIP2-S4"]
# timm name -> the small shape the tests build (stage depths, first width, mlp ratio, style) and its image size
SMALL = {
    "fastvit_mci0": (((1, 2, 1, 2), 16, 3.0, "mci"), 64),
    "fastvit_mci3": (((1, 1, 2, 1, 1), 16, 4.0, "mci-large"), 128),
}


@pytest.fixture
def small_timm(monkeypatch):
    """open_clip passes no shape arguments to timm, so timm.create_model is wrapped to build the SMALL shape of the
    requested fastvit_mci* recipe (its every other choice kept), and clipforge's table is pointed at that shape."""
    create = timm.create_model

    def small(name, **kw):
        (layers, width, _, _), _ = SMALL[name]
        return create(name, layers=layers, embed_dims=tuple(width * 2**i for i in range(len(layers))), **kw)

    monkeypatch.setattr(timm, "create_model", small)
    for name, (spec, _) in SMALL.items():
        monkeypatch.setitem(openclip_mobileclip.TIMM_FASTVITS, name, spec)


def _openclip(timm_name: str):
    """open_clip's MobileCLIP recipe (CustomTextCLIP + TimmModel, timm_pool avg, timm_proj null) with the small
    tower, every parameter and BatchNorm statistic randomised (so BN folding is really exercised); its model_cfg."""
    cfg = dict(open_clip.get_model_config("MobileCLIP2-S0"))
    cfg.pop("custom_text")
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "timm_model_name": timm_name, "image_size": SMALL[timm_name][1]}
    cfg.update(embed_dim=24, text_cfg=SMALL_TEXT)
    torch.manual_seed(1)
    model = open_clip.CustomTextCLIP(**cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if name.endswith("gamma") else 0.05))  # LayerScale starts at 1e-5
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return model, {**cfg, "custom_text": True}


def _save_hub_dir(path, model, model_cfg):
    path.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "open_clip_model.safetensors")
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    return path


def _first_piece_that_differs(theirs, ours, images) -> str:
    """Name the first tower piece whose output differs (stem, stages.N, final_conv), for a parity failure."""
    trunk, visual = theirs.visual.trunk, ours.visual
    with torch.no_grad():
        a, b = images, images
        for name, pa, pb in [("stem", trunk.stem, visual.stem),
                             *((f"stages.{i}", sa, sb) for i, (sa, sb) in enumerate(zip(trunk.stages, visual.stages))),
                             ("final_conv", trunk.final_conv, visual.final_conv)]:
            a, b = pa(a), pb(b)
            if (a - b).abs().max() > TOL * a.abs().max():
                return name
    return "head (pool / head.fc)"


def _images(size: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _assert_parity(theirs, ours, image_size: int) -> tuple[float, float]:
    images = _images(image_size)
    tokens = open_clip.tokenize(["a photo of a cat", "a diagram", "two dogs in the snow"])
    with torch.no_grad():
        ref_i, ref_t = theirs.encode_image(images, normalize=True), theirs.encode_text(tokens, normalize=True)
        got_i, got_t = ours.encode_image(images, normalize=True), ours.encode_text(tokens, normalize=True)
    di, dt = (got_i - ref_i).abs().max().item(), (got_t - ref_t).abs().max().item()
    where = _first_piece_that_differs(theirs, ours, images) if di > TOL else ""
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} (first differs at {where}) text {dt:.2e}"
    return di, dt


@pytest.mark.parametrize("timm_name", list(SMALL))
def test_openclip_fastvit_loads_with_parity_and_reparameterizes(tmp_path, small_timm, timm_name):
    theirs, model_cfg = _openclip(timm_name)
    ours = clipforge.load_model(_save_hub_dir(tmp_path / "hub", theirs, model_cfg)).eval()
    assert ours.config.vision.fastvit == SMALL[timm_name][0][3]
    size = SMALL[timm_name][1]
    _assert_parity(theirs, ours, size)
    images = _images(size)
    with torch.no_grad():
        before = ours.encode_image(images, normalize=True)
        ours.visual.reparameterize()
        after = ours.encode_image(images, normalize=True)
    fused = {k for k in ours.visual.state_dict() if "reparam_conv" in k}
    assert fused and not any(".identity." in k or ".conv_kxk." in k or "large_conv" in k
                             for k in ours.visual.state_dict())
    assert (after - before).abs().max().item() <= TOL
    _assert_parity(theirs, ours, size)


def test_parity_failure_names_the_first_differing_stage(tmp_path, small_timm):
    theirs, model_cfg = _openclip("fastvit_mci0")
    ours = clipforge.load_model(_save_hub_dir(tmp_path / "hub", theirs, model_cfg)).eval()
    with torch.no_grad():
        ours.visual.stages[2].blocks[0].token_mixer.mixer.identity.running_var.mul_(2.0)
    with pytest.raises(AssertionError, match=r"first differs at stages\.2"):
        _assert_parity(theirs, ours, 64)


def test_export_to_openclip_round_trips_exactly(tmp_path, small_timm):
    """clipforge -> open_clip files -> open_clip's own model (strict load, BN statistics included) gives the same
    features; the written config names the timm tower as open_clip's MobileCLIP configs do."""
    theirs, model_cfg = _openclip("fastvit_mci3")
    ours = clipforge.load_model(_save_hub_dir(tmp_path / "hub", theirs, model_cfg)).eval()
    clipforge.save_model(ours, tmp_path / "out", format="openclip")
    written = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())["model_cfg"]
    assert written["vision_cfg"]["timm_model_name"] == "fastvit_mci3" and written["vision_cfg"]["timm_proj"] is None
    written.pop("custom_text")
    fresh = open_clip.CustomTextCLIP(**written).eval()
    state = load_file(tmp_path / "out" / "open_clip_model.safetensors")
    # open_clip's load_checkpoint moves top-level text keys under text. for a CustomTextCLIP; so does this
    fresh.load_state_dict(open_clip.model.convert_to_custom_text_state_dict(state), strict=True)
    _assert_parity(fresh, ours, 128)


@pytest.mark.parametrize("name", NAMES)
def test_named_architectures_are_open_clips_configs(name):
    """The registered configs are what open_clip's model_configs/<name>.json translate to (full-size key and shape
    equality with open_clip on the meta device is tests/models/test_architectures.py's)."""
    ours = get_model_config(name)
    theirs = config_from_openclip(open_clip.get_model_config(name))
    assert ours.vision == theirs.vision and ours.embed_dim == theirs.embed_dim
    assert not ours.text.causal_mask and ours.text.width == theirs.text.width
    assert openclip_mobileclip.fastvit_vision_to_openclip(ours.vision)["timm_model_name"] == (
        open_clip.get_model_config(name)["vision_cfg"]["timm_model_name"]
    )


def test_reparameterize_matches_timm_full_size_mci0_block_layout():
    """Full-size MCi0 tower on the meta device: the same parameter names and shapes as timm's fastvit_mci0."""
    with torch.device("meta"):
        ours = CLIP(get_model_config("MobileCLIP2-S0")).visual
        ref = timm.create_model("fastvit_mci0", num_classes=512, global_pool="avg")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def _tiny(style: str = "mci") -> CLIP:
    layers = (1, 1, 1, 1) if style == "mci" else (1, 1, 1, 1, 1)
    cfg = get_model_config("MobileCLIP2-S0" if style == "mci" else "MobileCLIP2-S3")
    vision = VisionConfig(image_size=32 * 2 ** (len(layers) - 4), layers=layers, width=8, patch_size=4,
                          mlp_ratio=2.0, pool_type="avg", fastvit=style)
    text = cfg.text.__class__(**{**cfg.text.__dict__, "width": 32, "heads": 2, "layers": 1})
    torch.manual_seed(0)
    return CLIP(cfg.replace(embed_dim=16, vision=vision, text=text))


def test_training_forward_backward_reaches_every_parameter():
    model = _tiny("mci-large").train()
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.encode_image(torch.randn(2, 3, 64, 64), normalize=True).pow(3).sum().backward()
    no_grad = [n for n, p in model.visual.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"image tower parameters without gradient: {no_grad}"


def test_grad_checkpointing_gives_the_same_gradients():
    model = _tiny().eval()
    images = torch.randn(2, 3, 32, 32)

    def grads():
        model.zero_grad()
        model.encode_image(images).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.visual.named_parameters()}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    for name, g in plain.items():
        assert_close_rel(checkpointed[name], g, rel=1e-5, what=name)


def test_torch_compile_forward_matches_eager():
    model = _tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = model.encode_image(images)
        compiled = torch.compile(model.visual, backend="aot_eager")(images)  # dynamo + AOT tracing, no codegen
    assert_close_rel(compiled, eager, rel=1e-4, what="compiled FastViT")


def test_lock_image_tower_and_frozen_batchnorm_statistics():
    model = _tiny().train()
    model.lock_image_tower(unlocked_groups=1, freeze_bn_stats=True)
    trainable = {n for n, p in model.visual.named_parameters() if p.requires_grad}
    assert trainable == {"head.fc.weight", "head.fc.bias"}
    stats = model.visual.stem[0].conv_kxk[0].bn.running_mean.clone()
    model.encode_image(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert torch.equal(model.visual.stem[0].conv_kxk[0].bn.running_mean, stats)


def test_project_false_and_any_size_inputs():
    model = _tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pre = model.encode_image(images, project=False)
        assert pre.shape == (2, 2 * 8 * 8)
        assert_close_rel(model.project_image(pre), model.encode_image(images), rel=1e-6, what="project")
        with pytest.raises(ValueError, match="32"):
            model.encode_image(torch.randn(1, 3, 64, 64))
        model.set_position_interpolation(True)
        assert model.encode_image(torch.randn(1, 3, 64, 96)).shape == (1, 16)
        with pytest.raises(ValueError, match="multiples of 32"):
            model.encode_image(torch.randn(1, 3, 48, 64))


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(fastvit="mci9"), "vision.fastvit"),
        (dict(layers=(1, 1, 1)), "4 or 5 stage depths"),
        (dict(layers=(1, 1, 1, 1, 1)), "five-stage"),
        (dict(image_size=48), "multiple of the tower's stride 32"),
        (dict(patch_size=16), "patch_size 4"),
        (dict(pool_type="tok"), "class token|pools by average"),
        (dict(width=6), "attention heads"),
        (dict(convnext=True), "two different towers"),
        (dict(ls_init_value=1e-6), "ls_init_value"),
    ],
)
def test_bad_fastvit_configs_are_refused_naming_the_field(change, message):
    fields = dict(image_size=64, layers=(1, 1, 1, 1), width=16, patch_size=4, pool_type="avg", fastvit="mci")
    with pytest.raises(ConfigError, match=message):
        VisionConfig(**{**fields, **change})


def test_unsupported_timm_options_and_fused_checkpoints_are_refused():
    cfg = open_clip.get_model_config("MobileCLIP-S2")
    for bad in ({"timm_proj": "linear"}, {"timm_pool": "token"}, {"timm_drop": 0.1}):
        with pytest.raises(ConfigError, match="|".join(bad)):
            config_from_openclip({**cfg, "vision_cfg": {**cfg["vision_cfg"], **bad}})
    fused = {"visual.trunk.stages.0.blocks.0.token_mixer.reparam_conv.weight": torch.zeros(1)}
    with pytest.raises(UnsupportedFamilyError, match="MobileCLIP-S1"):
        refuse_state_dict(fused, "ckpt")
    text_repmixer = {"text.transformer.0.token_mixer.mixer.conv_kxk.0.conv.weight": torch.zeros(1)}
    with pytest.raises(UnsupportedFamilyError, match="MobileCLIP"):
        refuse_state_dict(text_repmixer, "ckpt")
    training_form = {"visual.trunk.stages.0.blocks.0.token_mixer.mixer.conv_kxk.0.conv.weight": torch.zeros(1)}
    refuse_state_dict(training_form, "ckpt")  # open_clip's own layout: read, not refused


def test_native_round_trip_keeps_batchnorm_statistics_and_a_fused_tower_is_not_saved(tmp_path):
    model = _tiny("mci-large").eval()
    with torch.no_grad():
        for mod in model.visual.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    images = torch.randn(2, 3, 64, 64)
    clipforge.save_model(model, tmp_path / "cf")
    loaded = clipforge.load_model(tmp_path / "cf").eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    model.visual.reparameterize()
    with pytest.raises(clipforge.weights.formats.CheckpointError, match="reparameterised"):
        clipforge.save_model(model, tmp_path / "fused")
    assert not (tmp_path / "fused").exists()


def test_forward_is_the_full_computation_and_the_cli_names_the_tower(capsys):
    """No inference shortcut applies to a FastViT (the average pool reads every position): forward equals
    forward_tokens' pooled output; `clipforge models` lists the family by tower."""
    model = _tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.visual(images), model.visual.forward_tokens(images)[0])
    from clipforge.cli.models import main

    assert main(["--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["MobileCLIP2-S0"]["image"] == "FastViT-MCi/4st" and rows["MobileCLIP2-S4"]["image"] == "FastViT-MCi/5st"
    assert rows["MobileCLIP2-S3"]["image_size"] == 256 and rows["MobileCLIP2-S3"]["embed_dim"] == 768


def test_fsdp2_units_are_the_blocks_and_the_towers():
    from clipforge.train.sharding import _sharded_units

    model = _tiny("mci-large")
    units = _sharded_units(model)
    blocks = [b for stage in model.visual.stages for b in stage.blocks]
    assert units[: len(blocks)] == blocks and len(blocks) == 5
    assert units[-2:] == [model.visual, model.text]


def test_fsdp2_training_on_two_processes_matches_one_process(tmp_path):
    """Two gloo CPU ranks shard a tiny FastViT as the trainer does and backpropagate their own images (BatchNorm in
    training mode); FSDP2's averaged gradients equal one process's mean over both ranks' batches."""
    import importlib.util
    import socket
    import subprocess
    import sys
    from pathlib import Path

    worker_path = Path(__file__).with_name("fastvit_fsdp_worker.py")
    spec = importlib.util.spec_from_file_location("fastvit_fsdp_worker", worker_path)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "grads.safetensors"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run([sys.executable, str(worker_path), str(port), str(out)], check=True, timeout=300, env=env)
    sharded = load_file(out)
    model = worker.tiny_fastvit().train()
    loss = sum(model.encode_image(worker.images(rank)).pow(2).sum() for rank in (0, 1)) / 2
    loss.backward()
    params = dict(model.named_parameters())
    for name in worker.CHECKED:
        assert_close_rel(sharded[name], params[name].grad, rel=1e-4, what=name)
