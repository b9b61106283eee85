"""Train a head on every selected sample of a cache, save it, and score new images with it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError, unknown_name
from featcache.store import image_hashes, image_stats, open_read, read_config, read_provenance, \
    with_config_defaults
from regressors.cache_data import FUSE, CacheData, resolve_backbone_id, resolve_fusion, short_forms
from regressors.design import content_groups, design_matrix
from regressors.fitting import fit_estimator
from regressors.heads_io import check_savable, load_head, save_head
from regressors.modes import features_for_mode, get_mode
from regressors.registry import get_regressor
from featcache.untrusted import printable
from regressors.splits import subset_mask


def fit_and_save_head(data: CacheData, mode: str, target: str, regressor: str, path: str | Path, *,
                      subset: str = "all", seed: int = 0, device: str = "cpu") -> dict:
    """Fit `regressor` on every selected sample and save it with what predict needs to extract new images: the
    backbone's id, recorded configuration, name, pooling and size, or, for a fused backbone, those of each part
    (`parts`, in the fusion's order; the estimator keeps the block widths in its `blocks`)."""
    check_savable(regressor)
    selection = np.flatnonzero(subset_mask(data.samples.subset, data.samples.generator, subset))
    x, rows = design_matrix(data, mode, selection)
    y = data.target(target)[rows]
    model = get_regressor(regressor).factory(seed, device)
    if data.blocks:
        model.set_params(blocks=data.blocks)
    model = fit_estimator(model, x, y, content_groups(data)[rows])
    with open_read(data.path) as f:
        parts = [_part_metadata(f, bid, dim) for bid, dim in
                 zip(data.parts or (data.backbone_id,), data.part_dims or (int(data.emb.shape[1]),))]
    backbone = parts[0] if len(parts) == 1 else {"backbone_id": data.backbone_id, "parts": parts}
    metadata = {**backbone, "mode": mode, "target": target, "regressor": regressor, "subset": subset,
                "n_train": int(len(rows)), "feature_dim": int(data.emb.shape[1]), "seed": seed, "cache": data.path}
    save_head(model, regressor, path, metadata)
    return metadata


def _part_metadata(f, bid: str, dim: int) -> dict:
    """What predict needs to build one backbone again: its id, recorded configuration, name, pooling, size, width."""
    config, provenance = read_config(f, bid), read_provenance(f, bid)
    return {"backbone_id": bid, "backbone_config": config,
            "backbone_name": provenance.get("backbone_name", config["arch"]), "pool": config["pool"],
            "image_size": config["data_config"]["input_size"], "feature_dim": int(dim)}


def head_parts(meta: dict) -> list[dict]:
    """The backbones a head reads, each as {backbone_id, backbone_config, backbone_name, pool, image_size,
    feature_dim}: a fused head's `parts`, else the head's own keys (one part)."""
    if "parts" in meta:
        return list(meta["parts"])
    return [{key: meta.get(key) for key in PART_METADATA} | {"image_size": meta.get("image_size")}]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def images_in_folder(folder: str | Path) -> list[str]:
    """Every image file under `folder` (recursively), as sorted POSIX paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FeatcacheError(f"{folder}: not a folder")
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FeatcacheError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return found


DECODING_KEYS = ("decode", "jpeg_draft", "jpeg_draft_rule", "torch_resize", "precision")


def cached_features(cache: str | Path | None, backbone_id: str, root: str | Path, paths: list[str],
                    decoded_as: dict | None = None) -> dict[str, np.ndarray]:
    """Rows of `backbone_id` already in `cache` for these paths (matched by absolute path), so predict does not
    decode and forward them again; only while the image is the one extracted: the same size and modification
    time as recorded, or the same sha256 where `extract --verify` recorded one (an image replaced on disk was
    scored from its old features). Missing cache, backbone or rows, a cache without image records (version
    1), or one whose rows were decoded otherwise than `decoded_as` (the head's backbone config: decode path, JPEG
    draft and its rule, precision): nothing is reused."""
    if cache is None or not Path(cache).is_file():
        return {}
    try:
        with open_read(cache) as f:
            if f"features/{backbone_id}/emb" not in f or "images/size" not in f or "images/mtime_ns" not in f:
                return {}
            if decoded_as is not None and _decoding(read_config(f, backbone_id)) != _decoding(decoded_as):
                return {}
            cache_root = Path(str(f.attrs.get("root", "")))
            stored = f["images/path"].asstr()[()]
            position = {str((cache_root / p).resolve()): i for i, p in enumerate(stored)}
            wanted = {p: position.get(str((Path(root) / p).resolve())) for p in paths}
            rows = sorted({i for i in wanted.values() if i is not None})
            if not rows:
                return {}
            done = f[f"features/{backbone_id}/done"][rows]
            emb = f[f"features/{backbone_id}/emb"][rows]
            recorded = {"size": f["images/size"][rows], "mtime": f["images/mtime_ns"][rows],
                        "sha256": f["images/sha256"][rows] if "images/sha256" in f else np.zeros(len(rows), "S64")}
    except FeatcacheError:
        return {}
    by_row = {r: e for r, e, d in zip(rows, emb, done) if d and np.isfinite(e).all()}
    record = {r: k for k, r in enumerate(rows)}
    found = {p: i for p, i in wanted.items() if i in by_row}
    same = _unchanged(root, list(found), recorded, [record[i] for i in found.values()])
    return {p: by_row[i] for (p, i), keep in zip(found.items(), same) if keep}


def _decoding(config: dict) -> dict:
    config = with_config_defaults(config)
    return {key: config.get(key) for key in DECODING_KEYS}


def _unchanged(root: str | Path, paths: list[str], recorded: dict, ks: list[int]) -> np.ndarray:
    """Per path: its sha256 equals the recorded one where one was recorded, else its size and mtime do."""
    ks = np.asarray(ks, dtype=np.int64)
    size, mtime = image_stats(root, paths)
    same = (size == recorded["size"][ks]) & (mtime == recorded["mtime"][ks]) & (size > 0)
    hashed = np.flatnonzero(recorded["sha256"][ks] != b"")
    if len(hashed):
        same[hashed] = image_hashes(root, [paths[i] for i in hashed]) == recorded["sha256"][ks[hashed]]
    return same


def database_above(folders: list[str | Path], levels: int = 3) -> tuple[Path, Path] | None:
    """The nearest folder at or up to `levels` above `folders` whose annotation file detection would read (its
    folder, its file), or None: where images given by path could be paired with their image prompts."""
    from featcache.datasets.registry import annotation_candidates

    seen = set()
    for folder in folders:
        here = Path(folder).resolve()
        for place in [here, *here.parents][:levels + 1]:
            if place in seen:
                continue
            seen.add(place)
            try:
                found = annotation_candidates(place)
            except (OSError, ValueError, FeatcacheError):
                continue
            if found:
                return place, found[0][0]
    return None


def unpaired_warning(head: str | Path, mode: str, unpaired: int, folders: list[str | Path]) -> str:
    """The one line predict prints when a head that reads image prompts (pr) scores images given by path or
    folder without --prompt-image: they may have prompts that only their database's annotation pairs them with."""
    found = database_above(folders)
    if found is None:
        how = "--root DIR of their database (its annotation pairs each image with its prompt)"
    else:
        place, annotation = found
        shown = os.path.relpath(place) if place == Path.cwd() or Path.cwd() in place.parents else str(place)
        how = f"--root {shown} (its {annotation.name} pairs each image with its prompt)"
    images = "1 image was" if unpaired == 1 else f"{unpaired} images were"
    return (f"{head} is a {mode} head: {images} scored without an image prompt; if they have one, pair them "
            f"with {how}, or --prompt-image FILE for one image")


def backbones_to_load(head: str | Path, meta: dict, wanted: str | None) -> list[str]:
    """`backbone_to_load` for each of the head's parts; a fused head's `wanted` names its parts as A+B, in the
    head's order (else one line naming them)."""
    parts = head_parts(meta)
    if wanted is None or len(parts) == 1:
        return [backbone_to_load(head, part, wanted) for part in parts]
    ids = [part["backbone_id"] for part in parts]
    names = [name.strip() for name in wanted.split(FUSE)]
    try:
        same = len(names) == len(parts) and resolve_fusion(ids, wanted, str(head)) == ids
    except FeatcacheError:
        same = False
    if not same:
        raise FeatcacheError(f"--backbone {wanted!r}: the head {head} fuses {printable(meta['backbone_id'])}; name "
                             "its parts in that order, or leave --backbone out")
    return [backbone_to_load(head, part, name) for part, name in zip(parts, names)]


def backbone_to_load(head: str | Path, meta: dict, wanted: str | None) -> str:
    """`predict --backbone`: the forms `fit --backbone` takes (the full id, a registry name, either with the
    pooling, a unique prefix), as long as they name the head's own backbone id (else one line, with "did you
    mean"). Returns the name to build it by: a registry name as given, an explicit timm `arch` or `arch.tag` for
    a head trained on a timm name (its default tag may have moved since), else the head's own recorded name."""
    own = meta["backbone_name"]
    if wanted is None:
        return own
    from featcache.backbones import BACKBONES

    bid = meta["backbone_id"]
    full_arch, pool = bid.split("/")[:2]
    try:
        resolve_backbone_id([bid], wanted, str(head))
    except FeatcacheError:  # the hint also knows the registry's names for it (lite0/paper -> lite0/multilevel)
        names = [n for n, spec in BACKBONES.items() if spec.arch == full_arch.split(".")[0]]
        forms = {*short_forms(bid), *names, *(f"{n}/{pool}" for n in names)}
        raise unknown_name("backbone", wanted, [printable(bid)], f" of the head {head}",
                           aliases=dict.fromkeys(forms, printable(bid))) \
            from None
    name = wanted.partition("/")[0]
    if name in BACKBONES or (own not in BACKBONES and name in {full_arch, full_arch.split(".")[0]}):
        return name
    return own


PREDICT_METADATA = {"mode": str, "target": str, "regressor": str, "backbone_id": str, "feature_dim": int}
PART_METADATA = {"backbone_id": str, "backbone_name": str, "pool": str, "backbone_config": dict, "feature_dim": int}


def check_predict_metadata(head: str | Path, meta: dict) -> None:
    """The metadata predict reads, each of its type (a one-line error naming the first that is not), for the head
    and each of its parts (`head_parts`), the mode one this version knows."""
    def check(record: dict, keys: dict, where: str) -> None:
        for key, kind in keys.items():
            if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
                raise FeatcacheError(f"{head}: damaged featcache head (metadata {where}{key} missing or not of type "
                                     f"{kind.__name__})")
        if "backbone_config" in keys and not isinstance(record["backbone_config"].get("weights"), dict):
            raise FeatcacheError(f"{head}: damaged featcache head (metadata {where}backbone_config.weights missing)")

    check(meta, PREDICT_METADATA, "")
    parts = meta.get("parts", [meta])
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise FeatcacheError(f"{head}: damaged featcache head (metadata parts is not a list of backbones)")
    for k, part in enumerate(parts):
        check(part, PART_METADATA, f"parts[{k}]." if "parts" in meta else "")
    if "parts" in meta and FUSE.join(p["backbone_id"] for p in parts) != meta["backbone_id"]:
        raise FeatcacheError(f"{head}: damaged featcache head (metadata parts do not make its backbone_id)")
    get_mode(meta["mode"])


def recorded_weights(meta: dict, cache: str | Path | None) -> Path | None:
    """The weights file `cache` recorded for the head's backbone id, when its sha256 is the one the head names and
    the file there still has it; else None. A head names its weights by hash only: the path in its metadata is
    never opened."""
    from featcache.backbones.weights import weights_sha256

    wanted = str(meta.get("backbone_config", {}).get("weights", {}).get("file_sha256") or "")
    if len(wanted) != 64 or cache is None or not Path(cache).is_file():
        return None
    try:
        with open_read(cache) as f:
            recorded = read_config(f, meta["backbone_id"]).get("weights", {})
    except (FeatcacheError, KeyError, TypeError, ValueError, OSError):
        return None
    if not isinstance(recorded, dict) or recorded.get("file_sha256") != wanted or not recorded.get("file"):
        return None
    path = Path(str(recorded["file"]))
    try:
        return path if path.is_file() and weights_sha256(path) == wanted else None
    except OSError:
        return None


def weights_to_load(head: str | Path, meta: dict, weights: str | None, cache: str | Path | None) -> str | None:
    """The weights file predict builds the head's backbone from: `weights` when the user gives one; for a head
    whose backbone came from a file, the one `cache` recorded with the sha256 the head names
    (`recorded_weights`); else a one-line error asking for --weights. None for hub, package or random weights."""
    if weights is not None:
        return weights
    source = meta["backbone_config"]["weights"]
    if source.get("source") != "file":
        return None
    found = recorded_weights(meta, cache)
    if found is None:
        sha = printable(str(source.get("file_sha256") or "unknown"))[:64]
        raise FeatcacheError(f"{head}: its backbone {printable(meta['backbone_id'])} was built from a local weights "
                             f"file (sha256 {sha}) that the cache {cache} does not hold; pass that file with "
                             "--weights FILE (a head names its weights by hash; a path in it is not opened)")
    return str(found)


def predict_paths(head: str | Path, root: str | Path, images: list[str], prompts: list[str], *,
                  backbone: str | None = None, weights: str | None = None, mode: str | None = None,
                  device: str = "auto", batch_size: int = 32, workers: int = 0,
                  cache: str | Path | None = None) -> tuple[np.ndarray, dict]:
    """Scores of `images` (paths relative to root; prompts '' where none) with a saved head. Features already in
    `cache` under the head's backbone id (a fused head: each part's id) are reused; only the others are extracted
    (`meta['reused']` counts the images every part reused, `meta['extracted']` the others)."""
    model, meta = load_head(head)
    check_predict_metadata(head, meta)
    if mode is not None and mode != meta["mode"]:
        raise FeatcacheError(f"{head} was trained for --mode {meta['mode']}, not {mode}")
    has = np.array([bool(p) for p in prompts])
    spec = get_mode(meta["mode"])
    if spec.needs_prompt_image and spec.uses_prompt_image and not has.all():  # nr-prompted reads none
        if len(images) > 1:  # a database or folder: say how many and what to score instead
            first = printable(images[int(np.argmin(has))])
            raise FeatcacheError(f"{head} is a {meta['mode']} head: {int((~has).sum())} of {len(images)} images have "
                                 f"no image prompt (first: {first}); score only those with one (e.g. --dataset "
                                 "pku-i2iqa, or their files with --prompt-image), or use a pr head, which takes both")
        raise FeatcacheError(f"{head} is a {meta['mode']} head: every image needs --prompt-image "
                             "(a pr head accepts images with or without one)")
    names = backbones_to_load(head, meta, backbone)
    distinct = sorted(set(images) | {p for p in prompts if p})
    parts = head_parts(meta)
    blocks, extracted = [], set()
    for part, name in zip(parts, names):
        # --weights: the file of a single head's backbone; of a fused head's parts, those built from a file
        own = weights if len(parts) == 1 or part["backbone_config"]["weights"].get("source") == "file" else None
        known, todo = part_features(head, part, name, root, distinct, cache=cache, weights=own, device=device,
                                    batch_size=batch_size, workers=workers)
        blocks.append(known)
        extracted.update(todo)
    features = {p: np.concatenate([block[p] for block in blocks]) for p in distinct}
    dims = {len(v) for v in features.values()}
    if dims != {meta["feature_dim"]}:
        raise FeatcacheError(f"{head}: features have {sorted(dims)} dimensions, the head expects "
                             f"{meta['feature_dim']}")
    g = np.stack([features[p] for p in images])
    prompt_features = np.stack([features[q] if q else features[images[0]] for q in prompts])
    scores = np.asarray(model.predict(features_for_mode(g, prompt_features, has, meta["mode"])), np.float64)
    if not np.isfinite(scores).all():
        raise FeatcacheError(f"{head}: the head gives non-finite scores (damaged weights?)")
    return scores, dict(meta, reused=len(distinct) - len(extracted), extracted=len(extracted))


def part_features(head: str | Path, part: dict, name: str, root: str | Path, paths: list[str], *,
                  cache: str | Path | None, weights: str | None, device: str, batch_size: int,
                  workers: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """({path: feature} of one of the head's backbones for every path, the paths extracted rather than reused):
    the rows `cache` holds for the part's id are reused (`cached_features`), the others extracted with the part
    built from `name` and its recorded pooling, weights, size and view, and decoded as its features were."""
    known = cached_features(cache, part["backbone_id"], root, paths, part["backbone_config"])
    todo = [p for p in paths if p not in known]
    features = dict(known)
    if todo:
        from featcache.backbones import load_backbone
        from featcache.backbones.views import InputView
        from featcache.decode import decode_option
        from featcache.devices import resolve_device
        from featcache.forward import compute_features
        from featcache.images import DRAFT_RULE
        from featcache.store import with_config_defaults

        source = part["backbone_config"]["weights"]
        try:
            view = InputView.from_config(part["backbone_config"])
        except FeatcacheError as exc:
            raise FeatcacheError(f"{head}: {exc}") from None
        model_backbone = load_backbone(name, part["pool"], weights_to_load(head, part, weights, cache),
                                       source["source"] == "random", part["image_size"], view=view)
        if model_backbone.id != part["backbone_id"]:
            raise FeatcacheError(f"{head} was trained on backbone {printable(part['backbone_id'])}; {name} gives "
                                 f"{model_backbone.id}. Use the head's own backbone")
        recorded = with_config_defaults(part["backbone_config"])  # decode as the training features were
        precision = recorded.get("precision", "auto")  # and in their precision, except fp16/bf16 on a CPU (slow)
        if resolve_device(device).type != "cuda" and precision != "fp32":
            precision = "auto"
        emb = compute_features(model_backbone, root, todo, batch_size=batch_size, workers=workers, device=device,
                               precision=precision, decode=decode_option(recorded["decode"]),
                               jpeg_draft=bool(recorded["jpeg_draft"]),
                               jpeg_draft_rule=recorded.get("jpeg_draft_rule", DRAFT_RULE))
        features.update(zip(todo, emb))
    dims = {len(v) for v in features.values()}
    if dims != {part["feature_dim"]}:
        raise FeatcacheError(f"{head}: features of {printable(part['backbone_id'])} have {sorted(dims)} dimensions, "
                             f"the head expects {part['feature_dim']}")
    return features, todo


def score_column(target: str) -> str:
    """Predictions are `pred_<target>`, never the label's own name (easy to mistake for ground truth)."""
    return f"pred_{target}"


def write_scores(path: str | Path, images: list[str], prompts: list[str], scores: np.ndarray, target: str,
                 labels: np.ndarray | None = None) -> None:
    """`predict`'s CSV (image, prompt_image, pred_<target>[, <target>]), written atomically through a temporary
    file created exclusively; image names that start like a spreadsheet formula get a leading `'`."""
    from featcache.outputs import write_text_atomically
    from regressors.safe_text import Number, csv_text

    header = ["image", "prompt_image", score_column(target)] + ([target] if labels is not None else [])
    rows = ([image, prompt, Number(f"{score:.6f}")] + ([Number(repr(float(labels[k])))] if labels is not None
                                                       else [])
            for k, (image, prompt, score) in enumerate(zip(images, prompts, scores)))
    write_text_atomically(path, csv_text(header, rows))
