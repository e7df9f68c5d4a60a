"""The Hugging Face Hub: references that `load_checkpoint` downloads, and `save_pretrained` /
`push_to_hub` for any vitlab model (`vitlab.weights.checkpoint` puts them together from the
pieces here).

    vitlab.load_checkpoint("hf-hub:google/vit-base-patch16-224")          # transformers layout
    vitlab.load_checkpoint("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k")  # timm's hub copy
    vitlab.save_pretrained(model, "my-vit")       # model.safetensors + config.json + README.md
    vitlab.push_to_hub(model, "me/my-vit")        # the same, uploaded
    vitlab.load_checkpoint("hf-hub:me/my-vit")    # or load_checkpoint("my-vit") for the folder

Downloads and uploads go through huggingface_hub, so its cache, `HF_HUB_OFFLINE=1` and tokens
work as usual.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from vitlab.errors import CheckpointError

HUB_PREFIXES = ("hf-hub:", "timm:")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hub_reference(path: Any) -> bool:
    """True for "hf-hub:ORG/NAME[@REVISION]" and "timm:MODEL[.TAG]" strings."""
    return isinstance(path, str) and path.startswith(HUB_PREFIXES)


def parse_reference(ref: str) -> tuple[str, str | None]:
    """("repo_id", revision) of a hub reference; timm's models live under the "timm/" org."""
    prefix, _, rest = ref.partition(":")
    name, _, revision = rest.partition("@")
    if not name:
        raise CheckpointError(
            f"{ref!r} names no model; write e.g. hf-hub:google/vit-base-patch16-224"
        )
    repo_id = f"timm/{name}" if prefix == "timm" and "/" not in name else name
    return repo_id, revision or None


def resolve_reference(ref: str, cache_dir: str | Path | None = None, **download: Any) -> Path:
    """Fetch (or find in the local cache) a hub reference's weights and config.json; return
    the local snapshot directory that holds them. `download` goes to `hf_hub_download`."""
    repo_id, revision = parse_reference(ref)
    for name in WEIGHT_FILES:
        try:
            weights = Path(_download(repo_id, name, revision, cache_dir, **download))
        except LocalEntryNotFoundError as e:  # offline or unreachable: only the cache is left
            last: Exception = e
            download = {**download, "local_files_only": True}
            continue
        except EntryNotFoundError as e:  # the repo has no such file: try the next
            last = e
            continue
        for extra in ("config.json", "preprocessor_config.json"):
            _download_optional(repo_id, extra, revision, cache_dir, **download)
        return weights.parent
    raise CheckpointError(
        f"could not get {' or '.join(WEIGHT_FILES)} of {repo_id!r} from the Hugging Face Hub "
        f"({type(last).__name__}); check the name, your connection, or unset HF_HUB_OFFLINE"
    )


def _download(repo_id: str, filename: str, revision: str | None, cache_dir: Any, **kw: Any) -> str:
    try:
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, **kw)
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id!r} is not a model repository on the Hugging Face Hub (or it is private: "
            "log in with `hf auth login`)"
        ) from None
    except (EntryNotFoundError, LocalEntryNotFoundError):
        raise
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"downloading {repo_id}/{filename} failed: {e}") from None


def _download_optional(
    repo_id: str, filename: str, revision: str | None, cache_dir: Any, **kw: Any
) -> None:
    with contextlib.suppress(EntryNotFoundError, LocalEntryNotFoundError):
        _download(repo_id, filename, revision, cache_dir, **kw)


# ------------------------------------------------------------------------------- uploading
def upload_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload vitlab model",
) -> str:
    """Upload a folder to the model repository `repo_id` (created if it does not exist);
    returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message
    )
    return str(getattr(info, "commit_url", info))


def model_card(title: str) -> str:
    """A model card (README.md) that the Hub lists under the vitlab library."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="vitlab", tags=["vision-transformer", "image-classification"])
    return str(
        ModelCard(
            f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n"
            "A vitlab model (https://arxiv.org/abs/2010.11929). Load it with "
            '`vitlab.load_checkpoint("hf-hub:REPO_ID")` or, from a local copy, '
            "`vitlab.load_checkpoint(FOLDER)`.\n"
        )
    )
