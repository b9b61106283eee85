import numpy as np
import pytest
import timm
import torch

from featcache.backbones import BACKBONES, POOLINGS, FeatureExtractor, load_backbone, resolve_backbone
from featcache.backbones import weights as weights_module
from featcache.errors import FeatcacheError
from featcache.images import load_rgb
from tests.fakedata import KODAK

PAPER = {"vgg16": ("vgg16.tv_in1k", 512), "vgg19": ("vgg19.tv_in1k", 512), "resnet18": ("resnet18.tv_in1k", 512),
         "resnet50": ("resnet50.tv_in1k", 2048), "inception_v4": ("inception_v4.tf_in1k", 1536),
         "vit_large_patch16_224": ("vit_large_patch16_224.augreg_in21k_ft_in1k", 1024)}


@pytest.fixture(scope="module")
def vit_large():
    """One ViT-L/16 build (random weights) shared by every test that needs it: each build costs seconds."""
    return load_backbone("vit_large_patch16_224", random_weights=True)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n != "resnet18" else n for n in PAPER])
def test_paper_backbones_give_the_paper_feature_dimension(name, request):
    spec = BACKBONES[name]
    assert spec.timm_name == PAPER[name][0]
    backbone = request.getfixturevalue("vit_large") if name == "vit_large_patch16_224" else \
        load_backbone(name, random_weights=True)
    assert backbone.id == f"{spec.arch}.random/paper/{spec.input_size}"
    assert backbone.extractor().output_dim(spec.input_size) == PAPER[name][1] == spec.dim
    assert spec.input_size == (299 if name == "inception_v4" else 224)
    assert spec.data_config()["resize"] == (320 if name == "inception_v4" else 256)


@pytest.mark.slow
def test_vit_feature_is_the_class_token_of_the_last_block(vit_large):
    extractor = vit_large.extractor()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = extractor.model.forward_features(x)
    assert torch.allclose(extractor(x), tokens[:, 0], atol=1e-6)


def test_multilevel_pools_every_stage():
    backbone = load_backbone("lite0", pool="multilevel")
    extractor = backbone.extractor()
    assert [lv["num_chs"] for lv in extractor.levels] == [16, 24, 40, 112, 320]
    assert extractor.output_dim(224) == 2 * (16 + 24 + 40 + 112 + 320)
    with torch.device("meta"):  # the stages are the model's layout: no weights needed
        vit = timm.create_model("vit_large_patch16_224")
    levels = FeatureExtractor(vit, "pre_logits", "multilevel").levels
    assert [lv["module"] for lv in levels] == ["blocks.5", "blocks.11", "blocks.17", "blocks.23"]


def _top1(backbone, image):
    x = backbone.transform()(image)[None]
    with torch.no_grad():
        return int(backbone.extractor().model(x).argmax())


def test_lite0_has_real_imagenet_weights():
    backbone = load_backbone("lite0")
    if (KODAK / "kodim23.png").is_file():  # two parrots
        assert _top1(backbone, load_rgb(KODAK / "kodim23.png")) in (88, 89, 90)  # macaw, cockatoo, lorikeet
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    assert 281 <= _top1(backbone, Image.fromarray(skimage_data.chelsea())) <= 285  # a cat


@pytest.mark.slow
def test_local_weights_file_gives_the_same_features(tmp_path):
    from safetensors.torch import save_file

    packaged = load_backbone("lite0")
    save_file(packaged.extractor().model.state_dict(), str(tmp_path / "lite0.safetensors"))
    local = load_backbone("tf_efficientnet_lite0", weights_file=tmp_path / "lite0.safetensors")
    assert local.weights.tag.startswith("file-") and local.id.startswith("tf_efficientnet_lite0.file-")
    x = torch.randn(2, 3, 224, 224)
    assert torch.allclose(packaged.extractor()(x), local.extractor()(x), atol=1e-6)


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(FeatcacheError, match="other.pth: weights do not fit resnet18"):
        load_backbone("resnet18", weights_file=tmp_path / "other.pth").extractor()


def test_offline_hub_is_a_one_line_error_naming_what_to_fetch(monkeypatch):
    monkeypatch.setattr(weights_module, "_in_hf_cache", lambda hub_id: False)
    monkeypatch.setattr(weights_module, "_hub_reachable", lambda timeout=4.0: False)
    with pytest.raises(FeatcacheError, match=r"huggingface.co/timm/vgg19.tv_in1k .* --weights FILE"):
        load_backbone("vgg19").extractor()


def test_hub_weights_load_through_timm_from_the_hugging_face_cache(monkeypatch, tmp_path):
    """The hub route is timm's own (`pretrained=True`): offline, weights already in the Hugging Face cache load."""
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    repo = tmp_path / "models--timm--resnet18.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.manual_seed(5)
    published = timm.create_model("resnet18").eval()
    save_file(published.state_dict(), str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(weights_module, "_hub_reachable", lambda timeout=4.0: pytest.fail("probed the network"))
    backbone = load_backbone("resnet18")
    assert backbone.weights.source == "timm-hub" and backbone.id == "resnet18.tv_in1k/paper/224"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone.extractor().model(x), published(x))


def test_any_timm_model_and_did_you_mean():
    spec = resolve_backbone("resnet10t")
    assert spec.arch == "resnet10t" and spec.tag and spec.feature == "pre_logits"
    with pytest.raises(FeatcacheError, match="did you mean") as error:
        resolve_backbone("resnet51")
    listed = str(error.value).rsplit(": ", 1)[1].rstrip(")").split(", ")
    assert len(listed) == len(set(listed)) and "resnet18" in listed  # each name once
    assert np.isclose(resolve_backbone("lite0", image_size=160).data_config()["resize"], 183)
    for bad in (0, -5):  # 0 is not "the default" in the Python API either
        with pytest.raises(FeatcacheError, match=f"--image-size {bad}: must be at least 1"):
            resolve_backbone("lite0", image_size=bad)


def test_poolings_are_one_table_that_the_cli_lists():
    from click.testing import CliRunner

    import cli

    option = next(p for p in cli.extract.params if p.name == "pool")
    assert list(option.type.choices) == list(POOLINGS)
    listed = CliRunner().invoke(cli.main, ["backbones"])
    assert listed.exit_code == 0
    for spec in POOLINGS.values():
        assert f"--pool {spec.name}: {spec.doc}" in listed.output and spec.doc in option.help
    for spec in BACKBONES.values():
        assert spec.name in listed.output and spec.timm_name in listed.output


def test_unknown_pooling_has_the_shared_error_shape():
    with pytest.raises(FeatcacheError, match=r"unknown pooling 'multilvel'; did you mean 'multilevel'\? \(poolings: "
                                             r"paper, multilevel\)"):
        load_backbone("lite0", pool="multilvel")
