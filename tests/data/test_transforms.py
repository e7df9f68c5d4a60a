import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vitlab.data.transforms import (
    AugConfig,
    augment_batch,
    crop_boxes,
    mix_transform,
    normalize,
    pad_crop,
    random_erase,
    random_resized_crop,
    sample_transform,
)


def _batch(n=6, c=1, s=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8)


def test_pad_crop_equals_cropping_each_padded_image():
    x = _batch()
    got = pad_crop(x, 2, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same draws, in the same order
    oy = torch.randint(0, 5, (6,), generator=g)
    ox = torch.randint(0, 5, (6,), generator=g)
    for i in range(6):
        padded = TF.pad(x[i], [2, 2, 2, 2])
        assert torch.equal(got[i], TF.crop(padded, int(oy[i]), int(ox[i]), 12, 12))


def test_box_crops_are_bilinear_resampling():
    x = _batch(s=8)
    full = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(6, 1)
    assert torch.equal(crop_boxes(x, full, 8), x)  # the whole image at its size: unchanged
    quarter = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(6, 1)
    ref = F.interpolate(x[:, :, :4, :4].float(), size=8, mode="bilinear", align_corners=False)
    got = crop_boxes(x, quarter, 8)
    # inside the box both sample the same points (at the border roi_align sees the neighbours)
    inner = ref.round().clamp(0, 255)[:, :, 1:-1, 1:-1]
    assert (got[:, :, 1:-1, 1:-1].float() - inner).abs().max() <= 1


def test_random_resized_crop_boxes_stay_inside_and_keep_the_size():
    x = _batch(s=16)
    out = random_resized_crop(x, 12, 0.3, torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 12, 12) and out.dtype == torch.uint8


def test_random_erase_replaces_one_rectangle_within_the_area_bounds():
    x = torch.zeros(64, 1, 20, 20, dtype=torch.uint8)
    out = random_erase(x, 1.0, torch.Generator().manual_seed(0))
    changed = out[:, 0] != 0
    for m in changed:
        ys, xs = m.nonzero(as_tuple=True)
        if len(ys) == 0:
            continue
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert box <= 400 / 3 + 40  # at most a third of the area (+ rounding)
    assert changed.flatten(1).any(1).float().mean() > 0.9  # noise is almost never all zero


def test_eval_batch_only_resizes_and_fits_channels():
    x = _batch(c=1, s=8)
    out = augment_batch(x, AugConfig(img_size=16, channels=3), torch.Generator())
    ref = TF.resize(x, [16, 16], antialias=True).expand(-1, 3, -1, -1)
    assert torch.equal(out, ref)


def test_training_batches_are_reproducible_from_their_seed():
    aug = AugConfig(12, 1, train=True, scale=0.5, pad_crop=2, hflip=0.5, randaug_m=9, erase=0.5)
    x = _batch()
    a = augment_batch(x, aug, torch.Generator().manual_seed(3))
    b = augment_batch(x, aug, torch.Generator().manual_seed(3))
    c = augment_batch(x, aug, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == x.shape


def test_normalize_matches_torchvision():
    x = _batch(c=3)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.4, 0.3)
    ref = v2.Normalize(mean, std)(x.float() / 255)
    torch.testing.assert_close(normalize(x, mean, std), ref)


def test_mixup_gives_soft_targets_that_sum_to_one():
    mix = mix_transform(0.8, 1.0, 5)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 5
    _, soft = mix(x, y)
    assert soft.shape == (8, 5)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert mix_transform(0.0, 0.0, 5) is None


def test_sample_transforms_give_uint8_at_the_model_size():
    img = Image.new("RGB", (40, 30), (10, 200, 30))
    for train in (False, True):
        out = sample_transform(AugConfig(24, train=train, scale=0.3, hflip=0.5, randaug_m=5))(img)
        assert out.shape == (3, 24, 24) and out.dtype == torch.uint8
