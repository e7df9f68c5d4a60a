"""`vitlab convert`: the written files load in the target ecosystem's library with the same
logits, the summary says what was read and written, and mistakes are one-line errors."""

import json

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.cli.main import main


def test_convert_timm_to_hf_and_google(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    model = perturb_(vitlab.create_model("vit_test", num_classes=3)).eval()
    src = vitlab.save_checkpoint(model, tmp_path / "w.safetensors", format="timm")
    rc = main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf", "--set", "num_heads=2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "timm layout" in out and "2 layers" in out and "hf layout" in out
    ref = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ref(pixel_values=x).logits - model(x)).abs().max() <= 1e-4
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "g.npz"), "--to", "google"]) == 0
    back = vitlab.load_checkpoint(tmp_path / "g.npz")
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max() <= 1e-4


def test_convert_resizes(tmp_path, capsys):
    model = vitlab.create_model("vit_test")
    src = vitlab.save_checkpoint(model, tmp_path / "w.safetensors")
    dst = tmp_path / "big.safetensors"
    assert main(["convert", str(src), str(dst), "--to", "vitlab", "--set", "img_size=64"]) == 0
    assert vitlab.load_checkpoint(dst).pos_embed.shape[1] == 1 + 8 * 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "num_heads"], "key=value"),
        (["--set", "depthh=3"], "unknown ViTConfig field"),
        (["--resample", "lanczos"], "resampling"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    src = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "w.safetensors")
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(dst), "--to", "vitlab", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not dst.exists()


def test_refused_target_writes_nothing(tmp_path, capsys):
    src = vitlab.save_checkpoint(
        vitlab.create_model("vit_test", act="gelu_tanh"), tmp_path / "w.safetensors"
    )
    assert main(["convert", str(src), str(tmp_path / "tv.pth"), "--to", "torchvision"]) == 2
    assert "exact GELU" in capsys.readouterr().err
    assert not (tmp_path / "tv.pth").exists()


def test_set_floats_in_any_notation_reach_the_model(tmp_path, capsys):
    """`convert ... --set layer_norm_eps=1e-5` used to store the string '1e-5' (convert had its
    own --set parser) and fail in the forward pass."""
    import torch

    src = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "m.safetensors")
    dst = tmp_path / "out.safetensors"
    argv = ["convert", str(src), str(dst), "--to", "vitlab", "--set", "layer_norm_eps=1e-5"]
    assert main(argv) == 0
    model = vitlab.load_checkpoint(dst)
    assert model.cfg.layer_norm_eps == 1e-5 and model.blocks[0].norm1.eps == 1e-5
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("dst", "to", "needle"),
    [
        ("x.safetensors", "google", "written as .npz; name the file x.npz"),
        ("x.npz", "vitlab", "written as .safetensors"),
        ("folder", "vitlab", "is a folder"),
        ("photos", "hf", "holds other files (a.png)"),
        ("x.safetensors", "hf", "is a file"),
    ],
)
def test_a_destination_of_the_wrong_kind_is_refused_before_reading(
    tmp_path, capsys, dst, to, needle
):
    """`--to google x.safetensors` used to write a file vitlab itself then could not read;
    `--to hf` into a folder of photos wrote there and counted the photos as written files."""
    src = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "m.safetensors")
    (tmp_path / "folder").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"png")
    (tmp_path / "x.safetensors").write_bytes(b"")
    assert main(["convert", str(src), str(tmp_path / dst), "--to", to]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert (tmp_path / "photos" / "a.png").read_bytes() == b"png"  # untouched


def test_small_models_say_their_size_and_hf_counts_only_its_files(tmp_path, capsys):
    src = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "m.safetensors")
    assert main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    out = capsys.readouterr().out
    assert "24K params" in out and "3 file(s)" in out  # not "0.0M params"


@pytest.mark.parametrize("fmt", ["timm", "torchvision"])
def test_a_model_outside_the_registry_comes_back_exactly(tmp_path, fmt):
    """depth 1, D 32, 4 heads: timm and torchvision files store no head count, and it used to
    come back as 1 head (other predictions) with ImageNet mean/std and no class names. vitlab's
    .safetensors exports carry the config beside the tensors."""
    names = tuple("abcdefghij")
    m = perturb_(vitlab.create_model("vit_test", depth=1, num_heads=4, class_names=names,
                                     mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))).eval()  # fmt: skip
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors", format=fmt)
    back = vitlab.load_checkpoint(path)
    assert back.cfg.extra["source"] == fmt
    assert (back.cfg.num_heads, back.cfg.class_names, back.cfg.mean) == (4, names, m.cfg.mean)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x))


def test_an_unknown_head_count_is_refused_until_given(tmp_path, capsys):
    m = perturb_(vitlab.create_model("vit_test", depth=1, num_heads=4)).eval()
    pth = vitlab.save_checkpoint(m, tmp_path / "m.pth", format="torchvision")  # no metadata
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    assert main(["predict", "--checkpoint", str(pth), str(img)]) == 2
    err = capsys.readouterr().err
    assert "does not store num_heads" in err and "--set num_heads=N" in err
    assert main(["predict", "--checkpoint", str(pth), str(img), "--set", "num_heads=4"]) == 0


def test_convert_to_onnx_and_int8(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    model = perturb_(vitlab.create_model("vit_test", num_classes=3)).eval()
    src = vitlab.save_checkpoint(model, tmp_path / "w.safetensors", format="timm")
    dst = tmp_path / "m.onnx"
    args = ["convert", str(src), str(dst), "--to", "onnx", "--set", "num_heads=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "timm layout" in out and "max |logit difference|" in out and "fp32" in out
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert abs(session.run(None, {"images": x.numpy()})[0] - model(x).numpy()).max() < 1e-4
    q = tmp_path / "q.onnx"
    int8 = ["--quantize", "int8", "--calibrate", "synthetic", "--calibrate-images", "32"]
    rc = main(["convert", str(src), str(q), "--to", "onnx", "--set", "num_heads=2", *int8])
    out = capsys.readouterr().out
    assert rc == 0 and "int8 static" in out and "32 calibration images" in out
    assert vitlab.load_checkpoint(q).quantization.startswith("int8 static")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--to", "vitlab", "--quantize", "int8"], "are for --to onnx"),
        (["--to", "onnx", "--calibrate", "digits"], "add --quantize int8"),
        (["--to", "onnx", "--quantize", "int8", "--calibrate", "nosuchdata"], "unknown dataset"),
        (["--to", "onnx", "--opset", "17", "--dynamic-img-size"], "opset 17 cannot express"),
        (["--to", "onnx", "--opset", "12"], "--opset"),
    ],
)
def test_onnx_mistakes_are_one_line_errors(tmp_path, capsys, extra, message):
    pytest.importorskip("onnxruntime")
    src = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "w.safetensors")
    dst = tmp_path / ("m.onnx" if "onnx" in extra else "m.safetensors")
    assert main(["convert", str(src), str(dst), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vitlab convert: error:") and message in err[-1], err[-1]
    assert ".tmp" not in err[-1] and err[-1].count(dst.name) <= 1
    assert not dst.exists()


def test_an_onnx_file_is_not_converted_back(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "m.onnx", format="onnx")
    assert main(["convert", str(tmp_path / "m.onnx"), str(tmp_path / "w.safetensors"),
                 "--to", "vitlab"]) == 2  # fmt: skip
    assert "convert from the checkpoint it was exported from" in capsys.readouterr().err


def test_the_timm_recipe_in_the_help_loads_the_head(tmp_path, capsys):
    """The recipe `vitlab convert --help` gives, run as written by timm itself, on an export with
    10 classes (not timm's 1000): the logits are vitlab's."""
    timm = pytest.importorskip("timm")
    from vitlab.cli.convert import TIMM_RECIPE

    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert " ".join(TIMM_RECIPE.split()) in " ".join(capsys.readouterr().out.split())
    model = perturb_(vitlab.create_model("vit_ti16", num_classes=10)).eval()
    src = vitlab.save_checkpoint(model, tmp_path / "m.safetensors")
    dst = tmp_path / "timm.safetensors"
    assert main(["convert", str(src), str(dst), "--to", "timm"]) == 0
    code = TIMM_RECIPE.replace("NAME", "'vit_tiny_patch16_224'").replace("DST", repr(str(dst)))
    theirs = eval(code.replace("N)", "10)"), {"timm": timm}).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pool", ["gap", "token"])
def test_opset_17_exports_an_average_pooled_vit(tmp_path, capsys, pool):
    """The demo's model (pool: gap) at --opset 17: ONNX's converter left an attribute opset 17's
    ReduceMean lacks, and ONNX Runtime refused the graph, naming the temporary file."""
    ort = pytest.importorskip("onnxruntime")
    model = perturb_(vitlab.create_model("vit_test", pool=pool)).eval()
    src = vitlab.save_checkpoint(model, tmp_path / "w.safetensors")
    dst = tmp_path / "m.onnx"
    assert main(["convert", str(src), str(dst), "--to", "onnx", "--opset", "17"]) == 0
    assert "opset 17" in capsys.readouterr().out
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]),
                                   model(x), rtol=0, atol=1e-4)  # fmt: skip


def test_a_destination_under_a_file_is_one_line(tmp_path, capsys):
    src = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "w.safetensors")
    (tmp_path / "f.npz").write_text("a file")
    dst = tmp_path / "f.npz" / "m.npz"
    assert main(["convert", str(src), str(dst), "--to", "google"]) == 2
    err = capsys.readouterr().err.strip()
    on_the_way = tmp_path / "f.npz"
    assert err == f"vitlab convert: error: cannot write {dst}: {on_the_way} is a file, not a folder"


def test_int8_of_a_resnet_names_no_temporary_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = vitlab.create_model("bit_r50x1", layers=(1, 1), num_classes=3, img_size=32)
    src = vitlab.save_checkpoint(model, tmp_path / "r.safetensors")
    args = ["convert", str(src), str(tmp_path / "r.onnx"), "--to", "onnx", "--quantize", "int8"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no linear layers" in err and "fp32.onnx" not in err


def test_convert_to_openvino_then_predict_eval_and_bench_run_the_ir(tmp_path, capsys, standins):
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    src = standins / "m.safetensors"
    model = vitlab.load_checkpoint(src)
    dst = tmp_path / "m.xml"
    assert main(["convert", str(src), str(dst), "--to", "openvino"]) == 0
    out = capsys.readouterr().out
    assert "OpenVINO fp32 vs PyTorch" in out and "m.bin" in out
    # OpenVINO reads it without vitlab (in f32: on a CPU with bf16 it would take bf16 itself)
    compiled = ov.Core().compile_model(str(dst), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert abs(compiled(x.numpy())[0] - model(x).numpy()).max() < 1e-4
    photo = str(standins / "photo.png")
    assert main(["predict", "--checkpoint", str(dst), photo, "--precision", "bf16"]) == 0
    assert "photo.png: pattern" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(dst), "--data", "synthetic"]) == 0
    assert "test top-1" in capsys.readouterr().out
    bench = ["bench", "--checkpoint", str(dst), "--iters", "1", "--warmup", "0", "--json"]
    assert main([*bench, "--precision", "bf16"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["backend"] == "openvino" and r["precision"] == "bf16"
    q = tmp_path / "q.xml"
    int8 = ["--quantize", "int8", "--calibrate", "synthetic", "--calibrate-images", "32"]
    assert main(["convert", str(src), str(q), "--to", "openvino", *int8]) == 0
    out = capsys.readouterr().out
    assert "int8 NNCF" in out and "of the 32 calibration images" in out
    assert main(["convert", str(src), str(tmp_path / "r.xml"), "--to", "openvino",
                 "--quantize", "int8"]) == 2  # fmt: skip
    assert "add --calibrate DATA" in capsys.readouterr().err
