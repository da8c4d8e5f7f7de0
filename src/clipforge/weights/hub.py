"""Downloads from the Hugging Face hub, through huggingface_hub's cache and offline mode.

`HF_ENDPOINT` points huggingface_hub at another server (the tests use a loopback one);
`HF_HUB_OFFLINE=1` serves only what the cache holds. A file that cannot be had is a
`HubDownloadError` naming the repository, the files tried and the cache folder to look in.

Offline without HF_HUB_OFFLINE, huggingface_hub retries a missing file's metadata with backoff
(about 50 s for a pretrained tag, several files), so before the first download the hub's host
(or the proxy for it) is probed once per process with a short TCP connect. When it does not answer,
only the cache is used, and a miss says at once that the hub is unreachable and names HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

HUB_PREFIX = "hf-hub:"


class HubDownloadError(FileNotFoundError):
    """No file of a hub repository could be downloaded or found in the cache."""


REACH_TIMEOUT_S = 3.0  # a hub that does not accept a TCP connection in this time is taken as unreachable


def cache_dir(override: str | Path | None = None) -> Path:
    """The hub cache folder: `override`, else huggingface_hub's (HF_HUB_CACHE)."""
    return Path(override) if override is not None else Path(hf_constants.HF_HUB_CACHE)


def _connect_target(endpoint: str) -> tuple[str, int]:
    """(host, port) a request to `endpoint` first connects to: its proxy when one applies, else its host."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxy_parts.hostname or "", proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
    return host, parts.port or (443 if parts.scheme == "https" else 80)


_PROBES: dict[str, tuple[float, str | None]] = {}
PROBE_TTL_S = 60.0  # a notebook that regains its connection is not stuck with an old answer


def hub_unreachable(endpoint: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why `endpoint` cannot be reached (connection refused, timeout, no DNS), or None when it answers.

    The answer is kept for PROBE_TTL_S, so several files of one model cost one probe.
    """
    now = time.monotonic()
    if endpoint in _PROBES and now - _PROBES[endpoint][0] < PROBE_TTL_S:
        return _PROBES[endpoint][1]
    host, port = _connect_target(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            why = None
    except TimeoutError:
        why = f"{host}:{port}: no answer in {timeout:g} s"
    except OSError as exc:
        why = f"{host}:{port}: {exc.strerror or exc}"
    _PROBES[endpoint] = (now, why)
    return why


def _offline_reason() -> str | None:
    """None when downloads may be tried; else why only the cache can serve (offline mode or no connection)."""
    if hf_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    why = hub_unreachable(hf_constants.ENDPOINT)
    return None if why is None else f"the hub {hf_constants.ENDPOINT} is unreachable ({why})"


def offline_note() -> str:
    """Why hub files may be missing when only the cache can serve, with what to do; "" when the hub is reachable.

    For messages about files that were not found: offline, "not found" may only mean "not cached".
    """
    why = _offline_reason()
    if why is None:
        return ""
    if hf_constants.HF_HUB_OFFLINE:
        return f"{why}: only cached files are used, and this one is not cached; unset HF_HUB_OFFLINE to download it"
    return (
        f"{why}; connect to the internet (or fix HF_ENDPOINT / the proxy) and retry, or download the model "
        "once where you are online and set HF_HUB_OFFLINE=1 here"
    )


def _cached(repo_id: str, filename: str, revision: str | None, cache: str | Path | None) -> Path | None:
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, EntryNotFoundError):
        return None


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
    offline = _offline_reason()
    if offline is not None and not hf_constants.HF_HUB_OFFLINE:  # unreachable: the cache only, no retries
        for filename in filenames:
            found = _cached(repo_id, filename, revision, cache)
            if found is not None:
                return found
        raise HubDownloadError(
            f"{what}: {offline}, and none of {filenames} of {repo_id!r} is in the cache {cache_dir(cache)}; "
            "connect to the internet (or fix HF_ENDPOINT / the proxy) and retry, or download the weights once "
            "where you are online and set HF_HUB_OFFLINE=1 here"
        )
    problems = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache))
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: test it first
            problems.append(f"{filename}: not in the cache and offline or unreachable")
        except EntryNotFoundError:
            problems.append(f"{filename}: not in the repository")
        except GatedRepoError as exc:  # a subclass of RepositoryNotFoundError: test it first
            raise HubDownloadError(
                f"{what}: hub repository {repo_id!r} is gated; accept its terms on its hub page and log in "
                "(`hf auth login`, or set HF_TOKEN)"
            ) from exc
        except RepositoryNotFoundError as exc:
            raise HubDownloadError(
                f"{what}: hub repository {repo_id!r} was not found (or is private: log in with `hf auth login` "
                "or set HF_TOKEN)"
            ) from exc
        except OSError as exc:
            problems.append(f"{filename}: {type(exc).__name__}: {exc}")
    hint = f" ({offline})" if offline else ""
    raise HubDownloadError(
        f"{what}: could not get any of {filenames} from hub repository {repo_id!r}{hint}. "
        f"Cache folder: {cache_dir(cache)}. Tried: " + "; ".join(problems)
    )


# A tokenizer repository's main file, in the order tried: SigLIP's SentencePiece model, else a `tokenizers` file
# (SigLIP 2's Gemma vocabulary); and the files beside it that say its special tokens.
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# A Hugging Face text tower's tokenizer (XLM-R, RoBERTa, mT5, NLLB, XLM-V): `tokenizer.json` first (read by
# text/hf_tokenizer.py with `tokenizers`: tokenizer_config.json says NLLB and its language settings,
# special_tokens_map.json the pad token), else a slow tokenizer's vocabulary (mT5's hub repos have only
# spiece.model), which transformers' AutoTokenizer reads from the snapshot folder with the side files below
# (config.json tells it the model type when tokenizer_config.json names no class; merges.txt is RoBERTa's).
HF_TEXT_TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "vocab.json", "vocab.txt")
HF_TEXT_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")
HF_TEXT_SLOW_SIDE_FILES = ("config.json", "added_tokens.json", "merges.txt")


def download_tokenizer(
    repo_id: str,
    *,
    what: str,
    revision: str | None = None,
    cache: str | Path | None = None,
    files: tuple[str, ...] = TOKENIZER_FILES,
    side_files: tuple[str, ...] = TOKENIZER_SIDE_FILES,
) -> Path:
    """The local folder (huggingface_hub's snapshot of `repo_id`) holding the repository's tokenizer files.

    The first of `files` the repository has is downloaded with the `side_files` it has (one snapshot folder, so
    they lie together as the tokenizer readers expect); the weights are not. Offline (HF_HUB_OFFLINE=1, or the
    hub unreachable) the cache serves; a miss is a `HubDownloadError` naming the repository and what to do.
    The defaults are SigLIP's file set; `download_hf_text_tokenizer` asks for a Hugging Face text tower's.
    """
    try:
        main = download_first(repo_id, list(files), what=what, revision=revision, cache=cache)
    except HubDownloadError as exc:
        if not hf_constants.HF_HUB_OFFLINE:  # download_first already says what to do when the hub is unreachable
            raise
        raise HubDownloadError(f"{exc}. {offline_note()}") from exc
    for name in side_files:
        download_optional(repo_id, name, revision, cache)
    return main.parent


def download_hf_text_tokenizer(
    repo_id: str, *, what: str, revision: str | None = None, cache: str | Path | None = None
) -> Path:
    """The snapshot folder of a Hugging Face text tower's tokenizer (`HF_TEXT_TOKENIZER_FILES`), as
    `download_tokenizer`; a repository without `tokenizer.json` also gets the slow tokenizer's side files."""
    folder = download_tokenizer(
        repo_id, what=what, revision=revision, cache=cache, files=HF_TEXT_TOKENIZER_FILES, side_files=HF_TEXT_SIDE_FILES
    )
    if not (folder / "tokenizer.json").is_file():
        for name in HF_TEXT_SLOW_SIDE_FILES:
            download_optional(repo_id, name, revision, cache)
    return folder


def download_optional(repo_id: str, filename: str, revision: str | None = None, cache: str | Path | None = None):
    """The local path of an optional file, or None when the repository does not have it."""
    if _offline_reason() is not None:
        return _cached(repo_id, filename, revision, cache)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
