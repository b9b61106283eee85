"""Defaults so that `featcache extract --backbone vgg19` works as typed: a featcache.toml, else detection in cwd."""

from __future__ import annotations

import tomllib
from pathlib import Path

from featcache.errors import FeatcacheError

CONFIG_NAME = "featcache.toml"
DEFAULT_CACHE = "featcache.h5"
CONFIG_KEYS = {"dataset", "root", "annotation", "cache", "columns", "backbone", "pool", "device", "batch_size",
               "workers", "decode", "jpeg_draft"}


def load_config(folder: str | Path | None = None) -> dict:
    """Read featcache.toml from `folder` (cwd by default). One rule for its paths: `root` and `cache` are relative to
    the file's folder, `annotation` to the root (as --annotation is)."""
    folder = Path(folder or Path.cwd())
    path = folder / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise FeatcacheError(f"{path}: not valid TOML ({exc})") from exc
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise FeatcacheError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(CONFIG_KEYS))})")
    for key in ("root", "cache"):
        if key in config and not Path(config[key]).is_absolute():
            config[key] = str(folder / config[key])
    if "annotation" in config and not Path(config["annotation"]).is_absolute():
        config["annotation"] = str(Path(config.get("root", folder)) / config["annotation"])
    return config


def pick(value, config: dict, key: str, default=None):
    """The command-line value, else the config file's, else the default."""
    if value is not None and value != ():
        return value
    return config.get(key, default)
