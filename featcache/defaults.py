"""Defaults so that `featcache extract --backbone vgg19` works as typed: a featcache.toml, else detection in cwd."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from featcache.errors import FeatcacheError

CONFIG_NAME = "featcache.toml"
DEFAULT_CACHE = "featcache.h5"
CONFIG_KEYS = {"dataset", "root", "annotation", "cache", "columns", "backbone", "pool", "device", "batch_size",
               "workers", "decode", "jpeg_draft"}


def load_config(folder: str | Path | None = None) -> dict:
    """Read featcache.toml from `folder` (cwd by default). One rule for its paths: `root` and `cache` are relative to
    the file's folder, `annotation` to the root (as --annotation is). `root` and `annotation` are only read and may
    be anywhere; `cache` is written, so it must stay inside the file's folder (`_cache_problem`): a toml that came with
    a downloaded database cannot make featcache write elsewhere. A `cache` that does not is kept as a refusal that
    `pick` raises only when the command has no --cache of its own."""
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
    for key, value in config.items():
        problem = _type_problem(key, value)
        if problem:
            raise FeatcacheError(f"{path}: {key} = {_toml_repr(value)}: {problem}")
    if "cache" in config:
        problem = _cache_problem(folder, config["cache"])
        config["cache"] = str(folder / os.path.normpath(config["cache"])) if problem is None else _Refused(
            f"{path}: cache = {_toml_repr(config['cache'])} {problem}; a {CONFIG_NAME} may only name a cache inside "
            "its own folder: pass --cache on the command line instead")
    if "root" in config and not Path(config["root"]).is_absolute():
        config["root"] = str(folder / config["root"])
    if "annotation" in config and not Path(config["annotation"]).is_absolute():
        config["annotation"] = str(Path(config.get("root", folder)) / config["annotation"])
    return config


class _Refused(str):
    """A config value that must not be used: `pick` raises its text as the error."""


def _cache_problem(folder: Path, cache: str) -> str | None:
    """Why `cache` from the featcache.toml in `folder` would be written outside that folder, or None: an absolute
    path, one that climbs out with `..` after normalisation, or one whose real path (symlinks of its folders and of
    the file itself followed) lies outside the folder's real path."""
    if os.path.isabs(cache):
        return "is an absolute path"
    normal = os.path.normpath(cache)
    if normal == os.curdir or normal == os.pardir or normal.startswith(os.pardir + os.sep):
        return "leaves the folder of the file" if normal != os.curdir else "names the folder itself"
    real_folder = os.path.realpath(folder)
    if not os.path.realpath(os.path.join(real_folder, normal)).startswith(real_folder.rstrip(os.sep) + os.sep):
        return "leads through a symbolic link outside the folder of the file"
    return None


def _type_problem(key: str, value) -> str | None:
    """What is wrong with a config value, checked as the command line checks its options (the file bypasses click),
    or None: e.g. `jpeg_draft = "false"` (a string, not a boolean) or `workers = "2"` is refused."""
    if key == "jpeg_draft":
        return None if isinstance(value, bool) else "expected true or false (no quotes)"
    if key in ("batch_size", "workers"):
        low = 1 if key == "batch_size" else 0
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected a whole number (no quotes)"
        return None if value >= low else f"expected a number >= {low}"
    if key == "columns":
        from featcache.column_roles import ROLES

        ok = isinstance(value, dict) and all(isinstance(v, str) or (k == "target" and isinstance(v, list) and v and
                                                                   all(isinstance(c, str) for c in v))
                                             for k, v in value.items())
        if not ok:
            return 'expected a table of role = "column" (target may be a list of columns)'
        unknown = sorted(set(value) - set(ROLES))  # a misspelt group would silently make every image its own
        if unknown:
            return f"unknown role(s) {', '.join(unknown)} (roles: {', '.join(ROLES)})"
        empty = [k for k, v in value.items() if not all(c.strip() for c in ([v] if isinstance(v, str) else v))]
        return f"empty column name for {', '.join(empty)}" if empty else None
    if not isinstance(value, str):
        return "expected a string (in quotes)"
    if key == "device":  # checked here, so the message names this file (torch would only say --device)
        from featcache.devices import DEVICE_HELP

        return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip().lower()) else f"expected {DEVICE_HELP}"
    choices = _choices(key)
    if choices and value not in choices:
        return f"expected one of {', '.join(choices)}"
    return None


def _choices(key: str) -> tuple[str, ...]:
    """The registries the command line's --pool and --decode choose from."""
    if key == "pool":
        from featcache.backbones.pooling import POOLINGS

        return tuple(POOLINGS)
    if key == "decode":
        from featcache.decode import DECODE_CHOICES

        return tuple(DECODE_CHOICES)
    return ()


def _toml_repr(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def pick(value, config: dict, key: str, default=None):
    """The command-line value, else the config file's, else the default. A config value that `load_config` refused
    (a `cache` outside the toml's folder) raises its one-line error here, where it would be used."""
    if value is not None and value != ():
        return value
    chosen = config.get(key, default)
    if isinstance(chosen, _Refused):
        raise FeatcacheError(str(chosen))
    return chosen
