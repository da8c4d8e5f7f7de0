"""Downloads from the Hugging Face hub, through huggingface_hub's cache and offline mode.

`HF_ENDPOINT` points huggingface_hub at another server (the tests use a loopback one);
`HF_HUB_OFFLINE=1` serves only what the cache holds. A file that cannot be had is a
`HubDownloadError` naming the repository, the files tried and the cache folder to look in.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

HUB_PREFIX = "hf-hub:"


class HubDownloadError(FileNotFoundError):
    """No file of a hub repository could be downloaded or found in the cache."""


def cache_dir(override: str | Path | None = None) -> Path:
    return Path(override) if override is not None else Path(hf_constants.HF_HUB_CACHE)


def download_first(
    repo_id: str,
    filenames: list[str],
    *,
    what: str,
    revision: str | None = None,
    cache: str | Path | None = None,
) -> Path:
    """Download the first of `filenames` that the repository has; return its local path.

    `what` names the request in errors (a pretrained tag or the hub id) so a user knows which
    call failed and where the cache is.
    """
    problems = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache))
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: test it first
            problems.append(f"{filename}: not in the cache and offline or unreachable")
        except EntryNotFoundError:
            problems.append(f"{filename}: not in the repository")
        except RepositoryNotFoundError as exc:
            raise HubDownloadError(f"{what}: hub repository {repo_id!r} was not found ({exc})") from exc
        except OSError as exc:
            problems.append(f"{filename}: {type(exc).__name__}: {exc}")
    offline = " (HF_HUB_OFFLINE is set)" if hf_constants.HF_HUB_OFFLINE else ""
    raise HubDownloadError(
        f"{what}: could not get any of {filenames} from hub repository {repo_id!r}{offline}. "
        f"Cache folder: {cache_dir(cache)}. Tried: " + "; ".join(problems)
    )


def download_optional(repo_id: str, filename: str, revision: str | None = None, cache: str | Path | None = None):
    """The local path of an optional file, or None when the repository does not have it."""
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
