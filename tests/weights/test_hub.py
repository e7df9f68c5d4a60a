"""Hub references and save_pretrained/from_pretrained, tested offline against a local Hugging
Face cache built here (the layout huggingface_hub itself reads), never the network."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError
from vitlab.weights.hub import parse_reference, resolve_reference

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline HF cache; `add(repo_id, {filename: writer})` puts a repo snapshot in it."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def add(repo_id, files):
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / COMMIT
        snap.mkdir(parents=True)
        for name, write in files.items():
            write(snap / name)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
        return snap

    return add


def test_parse_reference():
    assert parse_reference("hf-hub:google/vit-base-patch16-224") == (
        "google/vit-base-patch16-224",
        None,
    )
    assert parse_reference("timm:vit_tiny_patch16_224.augreg_in21k@abc") == (
        "timm/vit_tiny_patch16_224.augreg_in21k",
        "abc",
    )


def test_hf_hub_reference_loads_transformers_weights(hub_cache):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    ref = perturb_(transformers.ViTForImageClassification(cfg)).eval()
    hub_cache(
        "google/vit-test",
        {
            "model.safetensors": lambda p: save_file(
                {k: v.contiguous() for k, v in _legacy_state_dict(ref).items()}, str(p)
            ),
            "config.json": lambda p: p.write_text(json.dumps(cfg.to_dict())),
        },
    )
    ours = vitlab.load_checkpoint("hf-hub:google/vit-test")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - ref(pixel_values=x).logits).abs().max() <= 1e-4


def _legacy_state_dict(ref):
    """The tensors as save_pretrained writes them (the file names, not the module names)."""
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        return load_file(f"{d}/model.safetensors")


def test_timm_reference_with_imagenet_names(hub_cache):
    timm = pytest.importorskip("timm")
    ref = perturb_(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32)).eval()
    hub_cache(
        "timm/vit_tiny_patch16_224.test",
        {
            "model.safetensors": lambda p: save_file(ref.state_dict(), str(p)),
            "config.json": lambda p: p.write_text(
                json.dumps({"architecture": "vit_tiny_patch16_224"})
            ),
        },
    )
    ours = vitlab.load_checkpoint("timm:vit_tiny_patch16_224.test")
    from torchvision.models import ViT_B_16_Weights

    assert ours.cfg.class_names == tuple(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-4


def test_missing_repo_offline_is_a_clear_error(hub_cache):
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        resolve_reference("hf-hub:nobody/nothing")


@pytest.mark.parametrize("name", ["vit_test", "bit_r50x1"])
def test_save_pretrained_from_pretrained(tmp_path, hub_cache, name):
    kw = {"layers": (1, 1, 1, 1), "num_classes": 4} if name.startswith("bit") else {}
    model = perturb_(vitlab.create_model(name, **kw)).eval()
    vitlab.save_pretrained(model, tmp_path / "saved")
    card = (tmp_path / "saved" / "README.md").read_text()
    assert huggingface_hub.ModelCard(card).data.library_name == "vitlab"  # listed under vitlab
    x = torch.randn(2, 3, 32, 32)
    again = vitlab.load_checkpoint(tmp_path / "saved")  # a local directory
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    snap = hub_cache(  # the same directory as a hub repository in the cache
        "someone/my-model",
        {
            name: lambda p: p.write_bytes((tmp_path / "saved" / p.name).read_bytes())
            for name in ("model.safetensors", "config.json")
        },
    )
    assert snap.exists()
    from_hub = vitlab.load_checkpoint("hf-hub:someone/my-model")
    with torch.no_grad():
        assert torch.equal(from_hub(x), model(x))
    assert from_hub.cfg.to_dict() | {"extra": {}} == again.cfg.to_dict() | {"extra": {}}


def test_push_to_hub_uploads_the_saved_folder(monkeypatch, tmp_path):
    """push_to_hub creates the repository and uploads exactly what save_pretrained writes (the
    Hub itself is not reachable here: HfApi is replaced by a recorder)."""
    calls = {}

    class Api:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return "https://huggingface.co/me/m/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    url = vitlab.push_to_hub(vitlab.create_model("vit_test"), "me/m", private=True, token="t")
    assert url.endswith("/commit/1") and calls["token"] == "t"
    assert calls["repo"] == ("me/m", True, True)
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]


def test_offline_falls_back_to_cached_pytorch_bin(hub_cache):
    timm = pytest.importorskip("timm")
    ref = perturb_(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32)).eval()
    snap = hub_cache(
        "timm/only-bin", {"pytorch_model.bin": lambda p: torch.save(ref.state_dict(), p)}
    )
    assert resolve_reference("timm:only-bin") == snap
    ours = vitlab.load_checkpoint("timm:only-bin")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-4
