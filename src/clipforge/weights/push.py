"""`push_to_hub`: publish a model to a Hugging Face hub repository in any of clipforge's save formats.

The model is written with `save_model` into a temporary folder, the repository is created if needed
(`HfApi.create_repo(exist_ok=True)`) and the folder is uploaded as one commit (`HfApi.upload_folder`). The
result loads back with `load_model("hf-hub:ORG/NAME")` in every format; the "hf" format (the default) also
loads in transformers (`CLIPModel`, `CLIPProcessor`, the zero-shot pipeline). `HF_ENDPOINT` selects another
hub server, as for downloads (weights/hub.py); the token comes from `token=` or huggingface_hub's login.
"""

from __future__ import annotations

import tempfile
from typing import get_args

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from ..models.clip import CLIP
from .loading import SaveFormat, save_model


class HubUploadError(RuntimeError):
    """The hub refused or failed a repository creation or upload; the message names the repository and server."""


def _check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str):
        raise TypeError(f"repo_id must be a str like 'org/name', got {type(repo_id).__name__}")
    repo = repo_id.removeprefix("hf-hub:")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise ValueError(f"repo_id={repo_id!r} must be 'org/name' (your user or organisation, then the model name)")
    return repo


def push_to_hub(
    model: CLIP,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    format: SaveFormat = "hf",
) -> str:
    """Upload `model` to hub repository `repo_id` ("org/name"); returns the URL of the commit.

    Args:
        model: the model to publish (its config, preprocessing and weights).
        repo_id: "org/name" (an "hf-hub:" prefix is accepted); created as a model repository if it does not exist.
        private: create the repository private (an existing repository keeps its visibility).
        token: a hub token with write access; None uses huggingface_hub's stored login or HF_TOKEN.
        commit_message: defaults to "Upload CLIP model (<format> format) with clipforge".
        format: "hf" (transformers CLIPModel + processor files), "openclip" (open_clip hub layout) or
            "clipforge" (clipforge's own folder).
    """
    if not isinstance(model, CLIP):
        raise TypeError(f"push_to_hub takes a clipforge CLIP model, got {type(model).__name__}")
    if format not in get_args(SaveFormat):
        raise ValueError(f"unknown format {format!r}; expected one of {list(get_args(SaveFormat))}")
    repo = _check_repo_id(repo_id)
    message = commit_message or f"Upload CLIP model ({format} format) with clipforge"
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="clipforge-push-") as folder:
        save_model(model, folder, format=format)  # before any network call: a model that cannot be saved fails here
        try:
            api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=message, repo_type="model")
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            hint = (
                " Check the token: pass token=... or log in with `hf auth login`; it needs write access."
                if status in (401, 403)
                else ""
            )
            raise HubUploadError(
                f"push_to_hub: uploading to {repo!r} on {api.endpoint} failed (HTTP {status}): {exc}.{hint}"
            ) from exc
    return str(info.commit_url)


__all__ = ["HubUploadError", "push_to_hub"]
