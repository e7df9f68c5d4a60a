"""The one definition of evaluation preprocessing: how an image becomes a model's input.

Every reader takes it from here: `vitlab predict`, `eval` (image files), `serve` and `inspect`
through `prepare_image`/`eval_transform`, the models' `data_config`, the Hugging Face export's
`preprocessor_config.json`, the ONNX file's "preprocessing" metadata (`Preprocess.recipe`) and
the README's deployment example, which follows that recipe with PIL and numpy alone.

The rule, for a model of resolution S, centre-crop fraction `crop_pct` and resample filter F:

1. convert the image to the model's channel mode (`color_mode`), "RGB" (3 channels) or "L"
   (1 channel), as `vitlab.data.images.load_image` decodes it (EXIF orientation applied,
   transparency on white);
2. resize so that the short side is R = int(S / crop_pct) (S when crop_pct is 1), the long side
   int(R * long / short) (rounded down), with F, antialiased (torchvision's `Resize(R)` on the
   uint8 image, which matches PIL's `Image.resize`);
3. crop S x S from the centre, offsets round((side - S) / 2) (half to even);
4. scale to [0, 1] (divide by 255), subtract the mean and divide by the std per channel;
5. lay out as float32 (C, S, S), batched NCHW.

This module imports no other vitlab module but `errors` (data, weights and models read it), and
loads torchvision only when a transform is built, so `import vitlab.models` stays light.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from vitlab.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

Interpolation = Literal["bicubic", "bilinear", "nearest"]
# vitlab's interpolation names -> PIL.Image.Resampling's (what the ONNX recipe stores).
PIL_RESAMPLE = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC"}
RECIPE_VERSION = 1  # of the ONNX metadata's "preprocessing" JSON
RESCALE = 1 / 255  # uint8 -> [0, 1]


@dataclass(frozen=True)
class Preprocess:
    """What a model needs of its inputs; the fields are the keys of `model.data_config`."""

    img_size: int
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    crop_pct: float = 1.0
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in PIL_RESAMPLE:
            raise ConfigError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(PIL_RESAMPLE)}"
            )

    @classmethod
    def from_dict(cls, data_config: dict[str, Any]) -> Preprocess:
        """From a `data_config` dict; missing keys take the defaults (crop 1.0, bicubic)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data_config.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        """The `data_config` dict (img_size, in_chans, mean, std, crop_pct, interpolation)."""
        return asdict(self)

    @property
    def resize_size(self) -> int:
        """R: the short side after resizing, int(S / crop_pct) (S when crop_pct >= 1)."""
        return self.img_size if self.crop_pct >= 1.0 else int(self.img_size / self.crop_pct)

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to (`color_mode`)."""
        return color_mode(self.in_chans)

    @property
    def pil_resample(self) -> str:
        """The resample filter as `PIL.Image.Resampling` names it ("BICUBIC")."""
        return PIL_RESAMPLE[self.interpolation]

    def geometry(self) -> list[v2.Transform]:
        """PIL image (in `mode`) -> uint8 (C, S, S): resize the short side to R, centre-crop."""
        from torchvision.transforms import InterpolationMode, v2

        return [
            v2.ToImage(),
            v2.Resize(self.resize_size, InterpolationMode(self.interpolation), antialias=True),
            v2.CenterCrop(self.img_size),
        ]

    def transform(self) -> v2.Compose:
        """PIL image (in `mode`) -> float32 (C, S, S), normalised with mean and std."""
        import torch
        from torchvision.transforms import v2

        return v2.Compose(
            [
                *self.geometry(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(self.mean), list(self.std)),
            ]
        )

    def display(self, x: torch.Tensor) -> np.ndarray:
        """A normalised (C, H, W) input back in [0, 1] for display, (H, W, C)."""
        import torch

        mean = torch.tensor(self.mean).view(-1, 1, 1)  # (C, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)  # (C, 1, 1)
        return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, C)

    def recipe(self) -> dict[str, Any]:
        """The complete recipe as plain JSON data (the ONNX file's "preprocessing" metadata), for
        a deployment with PIL and numpy alone; README "Deploy" documents every key."""
        return {
            "version": RECIPE_VERSION,
            "color_mode": self.mode,
            "resize": {
                "shortest_edge": self.resize_size,
                "long_edge_rounding": "floor",
                "resample": self.pil_resample,
                "antialias": True,
            },
            "center_crop": {
                "height": self.img_size,
                "width": self.img_size,
                "offset_rounding": "half_to_even",
            },
            "rescale_factor": RESCALE,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": "NCHW",
            "dtype": "float32",
        }


def crop_pct_for(img_size: int, shortest_edge: int) -> float:
    """The crop_pct whose resize rule takes the short side to `shortest_edge` (>= img_size):
    img_size / shortest_edge, nudged where float division would land one pixel short."""
    crop_pct = img_size / shortest_edge
    if Preprocess(img_size, crop_pct=crop_pct).resize_size != shortest_edge:
        crop_pct = img_size / (shortest_edge + 0.5)
    return crop_pct


def color_mode(channels: int) -> str:
    """The PIL mode of a model's input images: "L" for 1 channel, else "RGB"."""
    return "L" if channels == 1 else "RGB"


def preprocess_of(model: Any) -> Preprocess:
    """A model's preprocessing, from its `data_config`."""
    return Preprocess.from_dict(model.data_config)


def eval_transform(data_config: dict[str, Any]) -> v2.Compose:
    """The evaluation transform of a `data_config`: PIL image (in the model's channel mode, see
    `vitlab.data.images`) -> float32 (C, S, S)."""
    return Preprocess.from_dict(data_config).transform()


def prepare_image(model: Any, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
    """The model's own evaluation preprocessing of a PIL image (already in its channel mode):
    the (C, H, W) input tensor and the same pixels un-normalised for display, (H, W, C)."""
    p = preprocess_of(model)
    x = p.transform()(image)  # (C, H, W)
    return x, p.display(x)


def label_of(model: Any, index: int) -> str:
    """The class name of output `index` from the model's config, or the index itself."""
    names = model.cfg.class_names
    return names[index] if names and index < len(names) else str(index)
