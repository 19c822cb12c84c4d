"""A hub id's config.json from the local Hugging Face cache: what `from_pretrained` would read, never a download.

The cache folder is found the way huggingface_hub finds it, read from the environment at call time (the eval's
variables, not the ones diag was imported with): HF_HUB_CACHE, then the legacy HUGGINGFACE_HUB_CACHE and
TRANSFORMERS_CACHE (transformers 4.x), then HF_HOME/hub, then XDG_CACHE_HOME/huggingface/hub, then
~/.cache/huggingface/hub. The lookup itself is huggingface_hub's `try_to_load_from_cache`, which only reads files.
References: https://huggingface.co/docs/huggingface_hub/guides/manage-cache and
https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

# An `org/name` or `name` hub id: not a path that exists, no spaces, huggingface_hub's allowed characters.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")


def hub_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The hub cache folder the eval's huggingface_hub would use with these environment variables."""
    env = os.environ if env is None else env
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        if env.get(name):
            return Path(env[name]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cached_config(repo_id: str, env: Mapping[str, str] | None = None, revision: str | None = None) -> Path | None:
    """The cached config.json of `repo_id` (the snapshot `revision`, default the branch main), or None."""
    key = repo_id.strip()
    if not _HUB_ID.fullmatch(key) or ".." in key:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(key, "config.json", cache_dir=hub_cache_dir(env), revision=revision)
    except (ValueError, OSError):  # an id huggingface_hub rejects (HFValidationError is a ValueError), a bad cache
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def cached_snapshot(repo_id: str, env: Mapping[str, str] | None = None, revision: str | None = None) -> Path | None:
    """The snapshot folder of `repo_id` in the local cache (the one holding its cached config.json), or None.

    A checkpoint's own modelling files (`auto_map` in config.json) sit beside config.json in that folder when the
    eval's loading fetched them; diag/twins/remote.py loads them from there, never from the network."""
    config = cached_config(repo_id, env, revision)
    return config.parent if config is not None else None
