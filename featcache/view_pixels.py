"""The Pillow path's pixels of the native and crops views (`featcache.backbones.views`): one decoded image in, the
tensor the backbone is fed out, by torchvision's public transforms and the views' shared geometry.

native: the whole image resized to `native_size` (no crop), (3, h, w). crops: the image resized to
`crop_source_size`, then the K `crop_boxes` of the input size, (K, 3, S, S). Both resize with the data config's
interpolation (Pillow's, always antialiased, as timm's eval transform), scale to [0, 1] and normalise with its mean
and std. Importing this module does not import torch."""

from __future__ import annotations

from featcache.backbones.views import InputView, crop_boxes, crop_source_size, item_shape, native_size


class ViewTransform:
    """PIL RGB image -> the pixels of `view` for a backbone whose data config is `data_config`.

    `source_size(height, width)` is the (height, width) the image is resized to before any crop; applied to its own
    result it gives the same size again, so an image already resized there (JPEG draft decoding) is not resized
    twice. `item_shape(height, width)` is the shape of the returned tensor."""

    def __init__(self, view: InputView, data_config: dict):
        if view.is_centre:
            raise ValueError("the centre crop is timm's eval transform (Backbone.transform)")
        self.view = view
        self.input_size = int(data_config["input_size"])
        self.interpolation = str(data_config["interpolation"])
        self.mean = tuple(float(x) for x in data_config["mean"])
        self.std = tuple(float(x) for x in data_config["std"])

    def source_size(self, height: int, width: int) -> tuple[int, int]:
        if self.view.kind == "native":
            return native_size(height, width, self.view.max_side)
        return crop_source_size(height, width, self.input_size, self.view.max_side)

    def item_shape(self, height: int, width: int) -> tuple[int, ...]:
        return item_shape(self.view, self.input_size, height, width)

    @property
    def resample(self) -> int:
        """The PIL filter of the data config's interpolation (what JPEG draft decoding resizes with)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.functional import pil_modes_mapping

        return pil_modes_mapping[InterpolationMode(self.interpolation)]

    def __call__(self, image):
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        height, width = image.height, image.width
        image = F.resize(image, list(self.source_size(height, width)), interpolation=InterpolationMode(
            self.interpolation))  # unchanged when the size is already right; PIL resizes antialiased
        pixels = F.normalize(F.to_tensor(image), self.mean, self.std)
        if self.view.kind == "native":
            return pixels
        size = self.input_size
        boxes = crop_boxes(pixels.shape[1], pixels.shape[2], size, self.view.crops, self.view.seed)
        return torch.stack([pixels[:, top:top + size, left:left + size] for top, left in boxes])
