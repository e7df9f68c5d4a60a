import pytest
import torch

import vitlab
from vitlab.errors import UnknownModelError
from vitlab.models import get_variant
from vitlab.models.registry import resolve


@pytest.mark.parametrize("name", vitlab.list_models())
def test_every_variant_builds_on_meta(name):
    m = vitlab.create_model(name, device="meta")
    assert all(p.is_meta for p in m.parameters())
    n = m.num_params()
    v = get_variant(name)
    if v.paper_params_m:  # Table 1: 86M, 307M, 632M within 2%
        assert abs(n / 1e6 - v.paper_params_m) / v.paper_params_m < 0.02, n


def test_small_variants_run_on_cpu():
    for name in vitlab.list_models():
        cfg = vitlab.get_config(name)
        if cfg.img_size <= 64:
            m = vitlab.create_model(name).eval()
            x = torch.randn(1, 3, cfg.img_size, cfg.img_size)
            assert m(x).shape == (1, cfg.num_classes)


@pytest.mark.parametrize(
    ("alias", "canonical", "img"),
    [
        ("ViT-B/16", "vit_b16", 224),
        ("B/16", "vit_b16", 224),
        ("vit_base_patch16_384", "vit_b16", 384),
        ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_b16", 224),
        ("vit_large_patch16_384", "vit_l16", 384),
        ("vit_huge_patch14_224", "vit_h14", 224),
        ("ViT-Ti/16", "vit_ti16", 224),
        ("vit_small_patch32_224", "vit_s32", 224),
    ],
)
def test_aliases(alias, canonical, img):
    assert resolve(alias)[0] == canonical
    assert vitlab.get_config(alias).img_size == img


def test_unknown_name_suggests():
    with pytest.raises(UnknownModelError, match="did you mean.*vit_b16"):
        vitlab.create_model("vit_b61")


def test_table_rows():
    from vitlab.models.registry import list_models, variant_facts

    table = [variant_facts(n, 224) for n in list_models(paper_only=True)]
    assert [r["name"] for r in table] == ["vit_b16", "vit_l16", "vit_h14"]
    assert table[0]["gflops"] == pytest.approx(35.1, abs=0.1)  # B/16 at 224: README's models table


@pytest.mark.parametrize(("img", "grid"), [(28, 7), (32, 8), (64, 16)])
def test_the_small_hybrid_puts_one_token_on_each_pixel_of_its_stride_4_features(img, grid):
    """r11_vit_micro, the data-scaling study's hybrid: a ResNet stem of stride 4 feeding
    vit_micro's transformer, for the 28-64 px images of the other small variants."""
    m = vitlab.create_model("r11_vit_micro", img_size=img, in_chans=1, pool="gap").eval()
    assert m.cfg.grid_size() == (grid, grid) and m.cfg.arch == "hybrid"
    out = m.forward_intermediates(torch.randn(2, 1, img, img))
    assert m(torch.randn(2, 1, img, img)).shape == (2, 10)
    assert out["attn"][0].shape[-1] == grid * grid  # gap pooling: no class token
