"""ONNX export: every kind of model vitlab builds, read back by ONNX Runtime's own
InferenceSession (not through vitlab) and compared with PyTorch; the metadata round trip; the
refusals."""

import json

import numpy as np
import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError, ConfigError
from vitlab.models.config import replace
from vitlab.weights.onnx import INPUT, OnnxModel, export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _hybrid_r50():
    cfg = vitlab.get_config("r50_vit_b16", embed_dim=32, depth=1, num_heads=2, mlp_dim=64,
                            img_size=64, num_classes=5)  # fmt: skip
    return vitlab.create_model(replace(cfg, backbone=replace(cfg.backbone, layers=(1, 1, 1))))


VARIANTS = {
    "vit token, learned": lambda: vitlab.create_model("vit_test", num_classes=7),
    "vit gap, sin-cos": lambda: vitlab.create_model("vit_test", pool="gap", pos_embed="sincos"),
    "vit pre-logits, tanh GELU": lambda: vitlab.create_model(
        "vit_test", representation_size=16, act="gelu_tanh"
    ),
    "vit 1 channel, patch 7": lambda: vitlab.create_model("vit_micro_p7", depth=1, in_chans=1),
    "hybrid small stem": lambda: vitlab.create_model("r11_vit_micro", depth=1),
    "hybrid R50 stem": _hybrid_r50,
    "BiT ResNet": lambda: vitlab.create_model(
        "bit_r50x1", layers=(1, 1, 1, 1), stem_width=8, gn_groups=8, img_size=32, num_classes=4
    ),
}


def _ort_logits(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: x.numpy()})[0]


@pytest.mark.parametrize("name", VARIANTS)
def test_export_equals_pytorch(name, tmp_path):
    model = perturb_(VARIANTS[name]()).eval()
    with torch.no_grad():  # a head of real size: the zero-initialised one would hide errors
        head = model.head.fc if hasattr(model.head, "fc") else model.head
        head.weight.normal_(0, 0.5)
    report = export_onnx(model, tmp_path / "m.onnx")
    c = model.cfg
    x = torch.randn(5, c.in_chans, c.img_size, c.img_size)  # traced with a batch of 2
    with torch.inference_mode():
        want = model(x).numpy()
    got = _ort_logits(tmp_path / "m.onnx", x)
    assert np.abs(got - want).max() < 1e-4
    assert report.max_abs_diff < 1e-4 and report.opset >= 18
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


@pytest.mark.parametrize("pos_embed", ["learn", "sincos"])
def test_dynamic_img_size_resamples_in_the_graph(pos_embed, tmp_path):
    """The exported graph resamples learned position embeddings (bicubic, antialiased) as the
    PyTorch model does for any input size, up and down, square or not."""
    model = perturb_(vitlab.create_model("vit_test", pos_embed=pos_embed)).eval()
    export_onnx(model, tmp_path / "m.onnx", dynamic_img_size=True)
    twin = vitlab.create_model("vit_test", pos_embed=pos_embed, dynamic_img_size=True)
    twin.load_state_dict(model.state_dict())
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert ("Resize" in ops) == (pos_embed == "learn")
    for h, w in ((32, 32), (48, 48), (16, 16), (32, 64)):
        x = torch.randn(2, 3, h, w)
        with torch.inference_mode():
            want = twin.eval()(x).numpy()
        assert np.abs(_ort_logits(tmp_path / "m.onnx", x) - want).max() < 1e-4, (h, w)


def test_a_fixed_size_export_refuses_other_sizes(tmp_path):
    export_onnx(vitlab.create_model("vit_test"), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="exported for 32x32 px input.*--dynamic-img-size"):
        OnnxModel(tmp_path / "m.onnx")(torch.randn(1, 3, 48, 48))


def test_metadata_round_trips(tmp_path):
    names = tuple(f"class {i}" for i in range(7))
    model = vitlab.create_model("vit_test", num_classes=7, class_names=names, mean=(0.5,) * 3,
                                std=(0.5,) * 3, crop_pct=1.0)  # fmt: skip
    export_onnx(model, tmp_path / "m.onnx")
    loaded = vitlab.load_checkpoint(tmp_path / "m.onnx")
    assert isinstance(loaded, OnnxModel)
    fields = lambda cfg: {k: v for k, v in cfg.to_dict().items() if k != "extra"}  # noqa: E731
    assert fields(loaded.cfg) == fields(model.cfg)
    assert loaded.cfg.extra["source"] == "onnx"
    assert loaded.cfg.class_names == names
    assert loaded.data_config == model.data_config
    assert loaded.num_params() == model.num_params()
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["format"] == "vitlab-onnx" and meta["quantization"] == "none"
    assert json.loads(meta["config"])["class_names"] == list(names)
    bit = vitlab.create_model("bit_r50x1", layers=(1, 1, 1, 1), stem_width=8, gn_groups=8)
    export_onnx(bit, tmp_path / "bit.onnx")
    assert vitlab.load_checkpoint(tmp_path / "bit.onnx").data_config["interpolation"] == "bilinear"


def test_metadata_holds_the_whole_preprocessing_recipe(tmp_path):
    """What a deployment without vitlab needs (README "Deploy"): the recipe of
    `vitlab.preprocess` and a label per output, as JSON."""
    from vitlab.preprocess import preprocess_of
    from vitlab.weights.onnx import read_metadata

    names = ("cat", "dog", "3")
    model = vitlab.create_model("vit_test", num_classes=3, class_names=names, in_chans=1,
                                mean=(0.3,), std=(0.2,), crop_pct=0.9)  # fmt: skip
    export_onnx(model, tmp_path / "m.onnx")
    meta = read_metadata(tmp_path / "m.onnx")
    recipe = json.loads(meta["preprocessing"])
    assert recipe == preprocess_of(model).recipe()
    assert recipe["color_mode"] == "L" and recipe["resize"]["shortest_edge"] == 35
    assert recipe["resize"]["resample"] == "BICUBIC" and recipe["center_crop"]["height"] == 32
    assert (recipe["mean"], recipe["std"], recipe["layout"]) == ([0.3], [0.2], "NCHW")
    assert json.loads(meta["class_names"]) == list(names)
    unnamed = vitlab.create_model("vit_test", num_classes=2)
    export_onnx(unnamed, tmp_path / "u.onnx")
    assert json.loads(read_metadata(tmp_path / "u.onnx")["class_names"]) == ["0", "1"]


def test_save_checkpoint_writes_onnx(tmp_path):
    model = perturb_(vitlab.create_model("vit_test")).eval()
    vitlab.save_checkpoint(model, tmp_path / "m.onnx", format="onnx")
    x = torch.randn(3, 3, 32, 32)
    got = vitlab.load_checkpoint(tmp_path / "m.onnx")(x)
    assert torch.allclose(got, model(x), atol=1e-4)


def test_an_opset_that_cannot_express_the_model_is_refused_with_the_reason(tmp_path):
    model = vitlab.create_model("vit_test")
    report = export_onnx(model, tmp_path / "old.onnx", opset=17)  # fixed size: expressible
    assert report.opset == 17 and opset_of(tmp_path / "old.onnx") == 17
    with pytest.raises(ConfigError, match=r"opset 17 cannot express.*Resize antialias"):
        export_onnx(model, tmp_path / "dyn.onnx", opset=17, dynamic_img_size=True)
    assert not (tmp_path / "dyn.onnx").exists()
    with pytest.raises(ConfigError, match="below 17"):
        export_onnx(model, tmp_path / "x.onnx", opset=13)


def opset_of(path) -> int:
    proto = onnx.load(str(path))
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def test_refusals(tmp_path):
    model = vitlab.create_model("vit_test")
    with pytest.raises(ConfigError, match=r"name it m\.onnx"):
        export_onnx(model, tmp_path / "m.pt")
    export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="cannot apply"):
        vitlab.load_checkpoint(tmp_path / "m.onnx", "vit_s16")
    with pytest.raises(ConfigError, match="graph is fixed"):
        vitlab.load_checkpoint(tmp_path / "m.onnx", num_classes=3)
    loaded = vitlab.load_checkpoint(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="already ONNX"):
        export_onnx(loaded, tmp_path / "again.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="not a readable ONNX file"):
        vitlab.load_checkpoint(tmp_path / "junk.onnx")
    foreign = tmp_path / "foreign.onnx"  # an ONNX file that vitlab did not write
    proto = onnx.load(str(tmp_path / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(CheckpointError, match="vitlab did not write"):
        vitlab.load_checkpoint(foreign)


def test_runner_inputs(tmp_path):
    export_onnx(vitlab.create_model("vit_test"), tmp_path / "m.onnx")
    model = vitlab.load_checkpoint(tmp_path / "m.onnx")
    assert model.to("cpu") is model and model.eval() is model
    with pytest.raises(ConfigError, match="CPU provider"):
        model.to("cuda")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x.double()), model(x))  # float64 in: computed in float32
    with torch.inference_mode():
        assert model(x).shape == (2, 10)
    assert model.session.get_inputs()[0].name == INPUT


def test_a_model_over_the_2gb_file_limit_is_refused_before_tracing(tmp_path):
    with torch.device("meta"):  # ViT-H/14's 632M parameters, never allocated
        huge = vitlab.create_model("vit_h14")
    with pytest.raises(ConfigError, match="over the 2 GiB that one ONNX file can hold"):
        export_onnx(huge, tmp_path / "h.onnx")
