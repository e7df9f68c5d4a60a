"""Every example of the README and of every `--help` runs as written, on tiny local stand-ins for
the files and datasets it names (so a wrong example fails CI). The examples are parsed out of
the texts; training examples are cut to two steps and benchmarks to one timed step of two
images, and nothing else is changed."""

import copy
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import vitlab
from tests.conftest import perturb_
from vitlab.cli.main import COMMANDS, build_parser, main
from vitlab.data import datasets
from vitlab.data.sets import ArraySet, DataSplits
from vitlab.models.config import replace
from vitlab.train.pretrain import save_pretrained_weights
from vitlab.train.selfsup import build_pretrainer
from vitlab.weights.checkpoint import record_init
from vitlab.weights.quantize import quantize_onnx

pytestmark = pytest.mark.slow
README = Path(__file__).parents[2] / "README.md"
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")  # fmt: skip


# ------------------------------------------------------------------------- the examples
def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """The README's fenced code blocks: (language, lines)."""
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def readme_commands() -> list[str]:
    """`vitlab ...` lines of the README's shell blocks (a `$ ` prompt and `# comments` off)."""
    lines = [line.strip().removeprefix("$ ")
             for lang, block in _blocks(README.read_text()) if lang in ("", "bash")
             for line in block]  # fmt: skip
    # a comment or (in the help text the README shows) a description follows 2+ spaces
    return [re.split(r"\s{2,}", line)[0] for line in lines if line.startswith("vitlab ")]


def help_commands() -> list[str]:
    """The examples of `vitlab --help` and of every command's help (description after 2+
    spaces off)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    texts = [parser.epilog, *(sub.choices[name].epilog or "" for name in COMMANDS)]
    lines = [line.strip() for text in texts for line in text.splitlines()]
    return [re.split(r"\s{2,}", line)[0] for line in lines if line.startswith("vitlab ")]


def python_blocks() -> list[str]:
    return ["\n".join(block) for lang, block in _blocks(README.read_text()) if lang == "python"]


COMMANDS_RUN = sorted(set(readme_commands() + help_commands()))


def test_the_texts_have_examples():
    assert len(readme_commands()) >= 20 and len(help_commands()) >= 20 and len(python_blocks()) == 3


# ------------------------------------------------------------------------ the stand-ins
def _rgb_vit(**kw):
    """ViT-B/16's shape cut small: D 48 with 12 heads (`--head 0 5 11`), 32 px, 10 classes."""
    cfg = {"embed_dim": 48, "depth": 2, "num_heads": 12, "mlp_dim": 96, "img_size": 32,
           "num_classes": 10, "class_names": FASHION, **kw}  # fmt: skip
    return perturb_(vitlab.create_model("vit_b16", **cfg)).eval()


def _write_models(ws: Path) -> None:
    demo = perturb_(vitlab.create_model("vit_micro_p7", embed_dim=32, depth=1, num_heads=2,
                                        mlp_dim=64, in_chans=1, class_names=FASHION))  # fmt: skip
    for name in ("last", "best"):
        vitlab.save_checkpoint(demo, ws / "runs" / "demo" / f"{name}.safetensors")
    (ws / "runs" / "demo" / "config.yaml").write_text(  # the run's hold-out, as fit writes it
        "data: fashion-mnist\nval_split: 0.25\nseed: 0\n")  # fmt: skip
    bit = perturb_(vitlab.create_model("bit_r50x1", in_chans=1, img_size=28, layers=(1, 1, 1, 1),
                                       stem_type="small", stem_width=8, gn_groups=8,
                                       class_names=FASHION))  # fmt: skip
    vitlab.save_checkpoint(bit, ws / "runs" / "bit" / "last.safetensors")
    _write_finetunes(ws, demo)
    mae = build_pretrainer(demo, "mae", decoder=(32, 1, 2))  # the encoder and its decoder
    save_pretrained_weights(mae, ws / "runs" / "mae" / "last.safetensors")
    vitlab.save_checkpoint(demo, ws / "demo.onnx", format="onnx")
    quantize_onnx(ws / "demo.onnx", ws / "demo-int8.onnx", method="dynamic")
    rgb = _rgb_vit()
    for name in ("m", "b16", "vit_b16", "model"):
        vitlab.save_checkpoint(rgb, ws / f"{name}.safetensors")
    google = _rgb_vit(act="gelu_tanh")
    for name in ("ViT-B_16.npz", "vit_b16.npz"):
        vitlab.save_checkpoint(google, ws / name, format="google")
    for name in ("vit_b_16.pth", "vit_b_16-c867db91.pth"):
        vitlab.save_checkpoint(rgb, ws / name, format="torchvision")
    timm_like = vitlab.create_model("vit_b16", embed_dim=64, depth=1, num_heads=1, mlp_dim=128,
                                    img_size=32, num_classes=1000)  # fmt: skip
    torch.save(timm_like.state_dict(), ws / "vit_base_patch16_224.pth")
    cfg = vitlab.get_config("r50_vit_b16", embed_dim=32, depth=1, num_heads=2, mlp_dim=64,
                            img_size=64, act="gelu_tanh")  # fmt: skip
    cfg = replace(cfg, backbone=replace(cfg.backbone, layers=(1, 1, 1)))
    hybrid = perturb_(vitlab.create_model(cfg))
    vitlab.save_checkpoint(hybrid, ws / "R50+ViT-B_16.npz", format="google")


def _write_finetunes(ws: Path, start: torch.nn.Module) -> None:
    """runs/ft1 and runs/ft2: two fine-tunes of `start` (its hash recorded, as `vitlab
    finetune` does; a quarter of the training images held out), and runs/soup, their soup."""
    start = copy.deepcopy(start)
    record_init(start)
    for name in ("ft1", "ft2"):
        run = ws / "runs" / name
        ft = perturb_(copy.deepcopy(start))
        for which in ("last", "best"):
            vitlab.save_checkpoint(ft, run / f"{which}.safetensors")
        (run / "config.yaml").write_text("data: fashion-mnist\nval_split: 0.25\nseed: 0\n")
    vitlab.save_checkpoint(start, ws / "runs" / "soup" / "soup.safetensors")


def _write_images(ws: Path) -> None:
    rng = np.random.default_rng(0)

    def photo(path: Path, shift: int = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 200, (40, 48, 3)) + shift
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)

    for c in range(10):
        for i in range(3):
            photo(ws / "photos" / f"class{c}" / f"{i}.png", 5 * c)
    for name in ("shirt.png", "boot.jpg", "cat.jpg", "dog.jpg"):
        photo(ws / name)
    for i in range(8):  # a flat folder without labels, for `vitlab pretrain`
        photo(ws / "all_photos" / f"{i}.jpg")


def _write_fashion_mnist(folder: Path) -> None:
    """The four idx files, 40 training and 20 test images of 28x28."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        head = np.array([0x00000803, n, 28, 28], dtype=">i4").tobytes()
        (folder / f"{split}-images-idx3-ubyte").write_bytes(head + images.tobytes())
        head = np.array([0x00000801, n], dtype=">i4").tobytes()
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(head + labels.tobytes())


def _write_hub(cache: Path) -> None:
    """Hugging Face Hub snapshots of the two repositories the examples name."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repos = {
        "google/vit-base-patch16-224": "hf",
        "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k": "timm",
    }
    for repo_id, layout in repos.items():
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / commit
        if layout == "hf":
            vitlab.save_checkpoint(_rgb_vit(), snap, format="hf")
        else:
            model = vitlab.create_model("vit_b16", embed_dim=64, depth=1, num_heads=1,
                                        mlp_dim=128, img_size=32)  # fmt: skip
            snap.mkdir(parents=True)
            save_file(model.state_dict(), str(snap / "model.safetensors"))
            (snap / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224"}))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="session")
def pristine(tmp_path_factory):
    ws = tmp_path_factory.mktemp("examples")
    _write_models(ws)
    _write_images(ws)
    _write_fashion_mnist(ws / "data" / "FashionMNIST" / "raw")  # where --download puts them
    _write_hub(ws / "hub")
    return ws


def _synthetic(num_classes: int, name: str) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (4 * num_classes, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(4 * num_classes) % num_classes
    sets = ArraySet(images, labels)
    names = tuple(f"{name} {i}" for i in range(num_classes))
    return DataSplits(name, sets, None, sets, names, 3, 32)


@pytest.fixture(autouse=True)
def _no_server(monkeypatch):
    """`vitlab serve` builds its app (the checkpoint loaded, the page's assets found) and
    returns instead of serving forever; tests/serve runs a real server."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)


@pytest.fixture
def workspace(pristine, tmp_path, monkeypatch):
    """A fresh copy of the stand-ins as the working directory; the datasets that would be
    downloaded (pets, cifar10) are small synthetic sets of their class counts."""
    import huggingface_hub

    ws = tmp_path / "ws"
    shutil.copytree(pristine, ws)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("VITLAB_DATA", str(ws / "data"))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", ws / "no-debian-copy")
    monkeypatch.setattr(datasets, "_pets", lambda root, download: _synthetic(37, "pets"))
    monkeypatch.setattr(datasets, "_cifar", lambda root, download, n: _synthetic(n, "cifar"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(ws / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return ws


# ----------------------------------------------------------------------------- running
def _cut(argv: list[str]) -> list[str]:
    """Training to two steps (uncompiled, fp32; the batch as written, which the run fits to
    the stand-in data), benchmarks to one timed step of two images; every other argument as
    written."""
    if argv[0] in ("train", "finetune", "pretrain"):
        return [*argv, "--steps", "2", "--set", "compile=false", "--set", "precision=fp32"]
    if argv[0] == "study":
        return _cut_study(argv)
    if argv[0] == "bench":
        keep = [a for i, a in enumerate(argv) if a != "--batch" and argv[i - 1] != "--batch"]
        return [*keep, "--iters", "1", "--warmup", "0", "--batch", "2"]
    return argv


# Every point of a study cut to two steps of 8 images and one seed (a fixed budget, and no
# learning-rate grid at sizes the stand-ins do not have), on subsets the stand-ins can fill.
STUDY_CUT = ["--set", "budget=null", "--set", "steps=2", "--set", "epoch_steps=1", "--set",
             "batch_size=8", "--set", "precision=fp32", "--set", "seeds=[0]"]  # fmt: skip


def _sets(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


NO_GRID = [f"families.{f}.lr_grid=null" for f in ("vit", "resnet")]
PROTOCOLS = ("fashion-to-digits", "fashion5-to-fashion5")
STUDY_AXIS = {
    "data-scaling": _sets("sizes=[20]", *NO_GRID, "families.hybrid.lr_grid=null"),
    "transfer": _sets("shots=[1]", *NO_GRID, *[f"protocols.{p}.shots=[1]" for p in PROTOCOLS],
                      *[f"protocols.{p}.source.train_images=null" for p in PROTOCOLS]),
    "model-scaling": _sets("train_images=20"),
}  # fmt: skip


def _cut_study(argv: list[str]) -> list[str]:
    """A study's points cut as above (the axis too: the stand-ins hold 40 images), and the
    shell pipeline after `|` left to the shell."""
    argv = argv[: argv.index("|")] if "|" in argv else argv
    if "--collect" in argv:  # a study must be there to collect: run the cut study into it
        folder = argv[argv.index("--collect") + 1]
        assert main([*argv[:2], "--out", folder, *STUDY_CUT, *STUDY_AXIS[argv[1]]]) == 0
        return argv
    axis = STUDY_AXIS[argv[1]]
    if "full" in argv:  # the full data-scaling preset has no hybrid family
        axis = _sets(*[x for x in axis[1::2] if not x.startswith("families.hybrid.")])
    return [*argv, *STUDY_CUT, *axis]


@pytest.mark.parametrize("line", COMMANDS_RUN)
def test_example_runs(line, workspace, capsys):
    if "openvino" in line:  # the vitlab[openvino] extra, which the dev install leaves out
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")
    argv = _cut(shlex.split(line)[1:])
    try:
        code = main(argv)
    except SystemExit as e:  # --help
        code = e.code
    err = capsys.readouterr().err
    assert code == 0, f"{line}\n{err[-3000:]}"
    assert "Traceback" not in err


@pytest.mark.parametrize("index", range(3))
def test_python_example_runs(index, workspace):
    code = python_blocks()[index]
    env = {"vitlab": vitlab, "torch": torch}
    if "collect_attention(model, x)" in code:  # the inspect snippet continues an earlier one
        env.update(model=_rgb_vit(), x=torch.randn(2, 3, 32, 32))
    exec(compile(code, f"README python block {index}", "exec"), env)
