"""`featcache info`: what a cache holds, for people and for scripts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError
from featcache.grouping import content_groups
from featcache.store import open_read, read_config, read_provenance, read_samples, walk_backbones
from featcache.untrusted import printable


def cache_info(path: str | Path) -> dict:
    """What `info` shows of the cache at `path`; a damaged table or attribute is a one-line FeatcacheError."""
    try:
        return _cache_info(path)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise FeatcacheError(f"{path}: the cache is damaged ({type(exc).__name__}: "
                             f"{printable(str(exc).splitlines()[0] if str(exc) else '')}); it cannot be read") from None


def _cache_info(path: str | Path) -> dict:
    with open_read(path) as f:
        samples = read_samples(f)
        complete, half_created = walk_backbones(f)  # one walk of /features for both lists
        info = {
            "path": str(path),
            "dataset": str(f.attrs.get("dataset", "")),
            "annotation": str(f.attrs.get("annotation", "")),
            "images": len(samples.image_keys),
            "samples": len(samples),
            "with_image_prompt": int((samples.prompt_image >= 0).sum()),
            "subsets": dict(Counter(samples.subset.tolist())),
            "generators": dict(Counter(samples.generator.tolist())),
            "groups": int(len(np.unique(content_groups(samples)))),  # what a prompt-disjoint split keeps apart
            "prompt_groups": int(len(set(samples.group.tolist()))),
            "targets": {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
                            "max": float(np.max(v))} for k, v in samples.targets.items()},
            "backbones": {},
            "half_created": half_created,
        }
        for bid in complete:
            group = f[f"features/{bid}"]
            info["backbones"][bid] = {
                "dim": int(group.attrs["dim"]),
                "rows_done": int(group["done"][()].sum()),
                "rows": int(group["done"].shape[0]),
                "shard": str(group.attrs.get("shard", "")),
                "config": read_config(f, bid),
                "provenance": read_provenance(f, bid),
            }
    return info


def format_info(info: dict) -> str:
    """The lines `featcache info` prints; control characters from the cache are shown escaped (e.g. \\x1b)."""
    lines = [
        f"cache      {info['path']}",
        f"dataset    {info['dataset']} ({Path(info['annotation']).name})",
        f"samples    {info['samples']} ({info['with_image_prompt']} with an image prompt); "
        f"distinct images {info['images']}; groups {info['groups']}" + (
            f" ({info['prompt_groups']} prompt ids and image prompts, those with the same text prompt joined)"
            if info["prompt_groups"] != info["groups"] else ""),
        "subsets    " + ", ".join(f"{k} {v}" for k, v in sorted(info["subsets"].items())),
        "generators " + ", ".join(f"{k} {v}" for k, v in sorted(info["generators"].items())),
        "targets    " + ", ".join(f"{k} (mean {v['mean']:.3g}, std {v['std']:.3g})" for k, v in info["targets"].items()),
    ]
    for bid in info.get("half_created", []):
        lines.append(f"backbone   {bid}: HALF CREATED by an interrupted extraction (run `featcache repair`)")
    if not info["backbones"]:
        lines.append("backbones  none yet (run `featcache extract`)")
    for bid, b in info["backbones"].items():
        p = b["provenance"]
        state = "complete" if b["rows_done"] == b["rows"] else "INCOMPLETE"
        lines.append(f"backbone   {bid}: {b['rows_done']}/{b['rows']} rows {state}, dim {b['dim']}")
        weights = b["config"].get("weights", {})
        lines.append(f"           weights {weights.get('source', '?')} {weights.get('file_sha256', '')[:16]} "
                     f"state {p.get('weights_state_sha256', '')[:16]}; {p.get('precision', '')} on "
                     f"{p.get('device', '')}; torch {p.get('torch', '')}, timm {p.get('timm', '')}")
        dc = b["config"].get("data_config", {})
        decode = b["config"]["decode"]
        draft = ", JPEG draft" if b["config"]["jpeg_draft"] else ""
        lines.append(f"           data {_input_text(b['config'], dc)} "
                     f"{dc.get('interpolation')} mean {dc.get('mean')} std {dc.get('std')}; decode {decode}{draft}")
        if p.get("command"):
            lines.append(f"           command {p['command']}")
        if p.get("merged_from"):
            lines.append(f"           merged from {', '.join(p['merged_from'])}")
    lines += [f"note       {n}" for n in info.get("notes", [])]
    if "problems" in info:
        disk = ", images unchanged on disk" if info.get("images_compared") else ""
        lines += [f"problem    {p}" for p in info["problems"]] or ["check      ok: every done row finite, tables and "
                                                                    f"attributes complete{disk}"]
    return "\n".join(printable(line) for line in lines)  # a cache's text never reaches the terminal raw


def _input_text(config: dict, data_config: dict) -> str:
    """How the images were fed: 'resize 256 crop 224', 'native, shorter side at most 1024' or '5 crops of 224 (shorter
    side in [224, 1024])', from the recorded view (`featcache.backbones.views`)."""
    view = config.get("input") or {}
    size = data_config.get("input_size")
    if not isinstance(view, dict) or (view and view.get("kind") not in ("native", "crops")):
        return f"unreadable view {view!r:.120}"
    if view.get("kind") == "native":
        return f"native, shorter side at most {view.get('max_side')}"
    if view.get("kind") == "crops":
        return (f"{view.get('crops')} crops of {size} (shorter side in [{size}, {view.get('max_side')}], seed "
                f"{view.get('seed')})")
    return f"resize {data_config.get('resize')} crop {size}"
