"""Backbones: a registry of specs, weights sources, and the frozen feature extractor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from featcache.backbones.pooling import POOLINGS, PoolingSpec, get_pooling
from featcache.backbones.views import CENTRE, InputView, parse_view
from featcache.backbones.registry import (
    BACKBONES,
    BackboneSpec,
    backbone_id,
    list_backbones,
    resolve_backbone,
)
from featcache.backbones.weights import (
    WeightsChoice,
    choose_weights,
    create_model,
    remembered_state_sha256,
    state_sha256,
)

if TYPE_CHECKING:
    from featcache.backbones.extractor import FeatureExtractor

__all__ = ["BACKBONES", "CENTRE", "POOLINGS", "Backbone", "BackboneSpec", "FeatureExtractor", "InputView",
           "PoolingSpec", "WeightsChoice", "backbone_id", "list_backbones", "load_backbone", "parse_view",
           "resolve_backbone"]


@dataclass
class Backbone:
    """A resolved backbone: its id and config are known at once; the network is built only when needed."""

    spec: BackboneSpec
    pool: str
    weights: WeightsChoice
    view: InputView = CENTRE
    _extractor: "FeatureExtractor | None" = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return backbone_id(self.spec, self.pool, self.weights.tag, self.view)

    def config(self) -> dict:
        """Everything that changes the numbers; compared against an existing cache before anything is written. The
        view is recorded under `input` unless it is the paper's centre crop (then the key is absent, as before)."""
        config = {
            "id": self.id,
            "arch": self.spec.arch,
            "weights": self.weights.to_dict(),
            "feature": get_pooling(self.pool).feature(self.spec.feature),
            "pool": self.pool,
            "data_config": self.spec.data_config(),
        }
        if self.view.config() is not None:
            config["input"] = self.view.config()
        return config

    def extractor(self) -> "FeatureExtractor":
        """The frozen network, built once. A native view needs a model that takes any input size: one that does
        not is a one-line FeatcacheError here (see `create_model`)."""
        from featcache.backbones.extractor import FeatureExtractor

        if self._extractor is None:
            model = create_model(self.spec, self.weights, variable_size=self.view.kind == "native")
            self._extractor = FeatureExtractor(model, self.spec.feature, self.pool)
        return self._extractor

    def transform(self):
        """PIL image -> the view's pixels: timm's eval transform (3, S, S) for the centre crop; for native and crops
        `featcache.view_pixels.ViewTransform`, (3, h, w) or (K, 3, S, S)."""
        cfg = self.spec.data_config()
        if not self.view.is_centre:
            from featcache.view_pixels import ViewTransform

            return ViewTransform(self.view, cfg)
        from timm.data import create_transform

        return create_transform(input_size=(3, cfg["input_size"], cfg["input_size"]),
                                interpolation=cfg["interpolation"], mean=tuple(cfg["mean"]),
                                std=tuple(cfg["std"]), crop_pct=cfg["crop_pct"], is_training=False)

    def weights_state_sha256(self) -> str:
        """The hash of the loaded tensors (provenance). For weights from a file it is remembered under the file's
        sha256, the architecture and the versions that turn the file into tensors, so that a run whose cache is
        complete needs neither the model nor the hash."""
        return remembered_state_sha256(self.weights, self.spec.arch, lambda: state_sha256(self.extractor().model))


def __getattr__(name: str):
    if name == "FeatureExtractor":  # imports torch: only when asked for
        from featcache.backbones.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(name)


def load_backbone(name: str, pool: str = "paper", weights_file=None, random_weights: bool = False,
                  image_size: int | None = None, view: InputView = CENTRE) -> Backbone:
    """A backbone by registered or timm name, with its pooling, weights and view (`featcache.backbones.views`)
    chosen and the weights file (if any) hashed, but the network not built (`Backbone.extractor()` builds it).
    Unknown names, poolings and missing or misnamed weights files are a one-line `FeatcacheError` here."""
    get_pooling(pool)  # an unknown name is an error before anything is built
    spec = resolve_backbone(name, image_size)
    return Backbone(spec, pool, choose_weights(spec, weights_file, random_weights), view)

