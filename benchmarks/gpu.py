"""GPU: where the time of `extract` goes, per backbone and batch size, on one synth folder reused by every backbone.

For each backbone and batch size: decoding alone on the CPU (DataLoader, the same workers as extract), decoding
alone on the device (JPEGs batched through torchvision, nvjpeg on CUDA, with featcache's resize, crop and
normalisation there), the bare forward (fp16 autocast on CUDA) on already-decoded tensors, `featcache extract` into
a fresh cache with each decode path (Pillow in workers; batched nvjpeg on the GPU, the default there) and the
features' cosine between the two, the start-up part of a small `featcache extract` command (wall time minus its
extraction loop; with a weights file, its hashes remembered, as a user's second run; also with --random-weights and
the file's first run), and one fine-tuning step per image (forward + backward + Adam, fp32 and bf16 autocast). Random
weights: speed does not depend on them.

    python benchmarks/gpu.py [--images 4096] [--batch-sizes 64,256] [--workers N] [--backbones resnet50,...]
                             [--out DIR] [--deadline SECONDS]
    python benchmarks/gpu.py --device cpu --images 64 --batch-sizes 16 --backbones resnet18   # a smoke test

Writes benchmarks/results/gpu.json (gpu_cpu.json with --device cpu).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from common import REPO, machine, photos_folder, save_json  # noqa: E402

PAPER = ["resnet18", "resnet50", "vgg19", "inception_v4", "vit_large_patch16_224"]


def make_folder(tmp: Path, images: int, size: int, distinct_views: int = 8) -> Path:
    """One synth database of about `images` JPEGs, shared by every backbone. Synth writes `distinct_views` views
    per photo and generator (about 20 ms an image on one core); the rest are hard links under new names, listed in
    the annotation as more generated images: every file is still read and decoded, which is what is timed."""
    import csv

    from featcache.synth import synth

    photos, _ = photos_folder(tmp)
    n_photos = len(list(Path(photos).iterdir()))
    views = max(1, int(round(images / (n_photos * (2 * 2 / 3 + 3 / 3)))))
    data = tmp / "data"
    synth(photos, data, views=min(views, distinct_views), size=size, seed=0)
    annotation = data / "annotation.csv"
    with open(annotation, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    copies = -(-views // min(views, distinct_views))  # ceil
    more = []
    for r in range(1, copies):
        for row in rows:
            name = row["Generated_image"].replace(".jpg", f"r{r}.jpg")  # keeps the GEN_pid_ prefix PKU parses
            os.link(data / "All" / row["Generated_image"], data / "All" / name)
            more.append({**row, "Generated_image": name})
    with open(annotation, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + more)
    return data


def _loader(folder: Path, paths, backbone, batch_size: int, workers: int, pin: bool):
    from torch.utils.data import DataLoader

    from featcache.image_rows import ImageRows, collate_rows, worker_init

    dataset = ImageRows(folder, paths, list(range(len(paths))), backbone.transform(), 10**9)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_rows,
                      worker_init_fn=worker_init if workers else None, pin_memory=pin)


def gpu_decode(folder: Path, paths, backbone, batch_size: int, device) -> float:
    """Images/s of what `extract` does in its decode thread on the torch path (`pixels_on_device`): batched
    JPEG decoding with torchvision on `device` (nvjpeg on CUDA), then featcache's resize, centre crop and
    normalisation there. JPEGs only: the PNG image prompts take Pillow in the workers in `extract` too."""
    import torch
    from torchvision.io import read_file

    from featcache.decode import EncodedJpeg, TorchPreprocess, pack_payloads
    from featcache.image_rows import ImageRows, pixels_on_device

    jpegs = [p for p in paths if p.lower().endswith((".jpg", ".jpeg"))]
    dataset = ImageRows(folder, jpegs, list(range(len(jpegs))), backbone.transform(), 10**9, jpeg_bytes=True)
    preprocess = TorchPreprocess(backbone.spec.data_config(), device)
    batches = [(list(range(i, min(i + batch_size, len(jpegs)))),
                pack_payloads([EncodedJpeg(read_file(str(folder / p))) for p in jpegs[i:i + batch_size]]))
               for i in range(0, len(jpegs), batch_size)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    pixels_on_device(*batches[0], dataset, preprocess, device)  # warm-up: nvjpeg's handle and buffers
    sync()
    start = time.perf_counter()
    for rows, packed in batches:
        pixels_on_device(rows, packed, dataset, preprocess, device)
    sync()
    return len(jpegs) / (time.perf_counter() - start)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def decode_agreement(folder: Path, paths, device, images: int = 256) -> dict:
    """Cosine between the features of the two decode paths with real ImageNet weights (lite0, fp32), on the first
    `images` JPEGs: random weights in fp16, as timed above, can amplify the decoders' last-bit differences
    chaotically, so they would not measure the decoders."""
    from featcache.backbones import load_backbone
    from featcache.forward import compute_features

    jpegs = [p for p in paths if p.lower().endswith((".jpg", ".jpeg"))][:images]
    lite0 = load_backbone("lite0")
    a = compute_features(lite0, folder, jpegs, device=str(device), precision="fp32", decode="cpu", jpeg_draft=False)
    b = compute_features(lite0, folder, jpegs, device=str(device), precision="fp32", decode="gpu")
    cosine = _cosine(a, b)
    return {"images": len(jpegs), "min": float(cosine.min()), "median": float(np.median(cosine))}


def finetune_step(backbone, device, batch_size: int, precision: str) -> float:
    """Seconds per image of one training step (forward + backward + Adam) of the whole network."""
    import torch

    model = backbone.extractor().model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-5)
    size = backbone.spec.input_size
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randn(batch_size, device=device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    times = []
    for step in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimiser.zero_grad()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.mse_loss(model(x)[:, 0].float(), y)
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return float(np.mean(times)) / batch_size


def startup_seconds(name: str, device: str) -> dict:
    """Wall time of `featcache extract` over 12 images in a fresh process, minus its extraction loop: with
    --random-weights (initialised at random), and with a weights file as a user runs
    it (random tensors saved as safetensors: built on meta and loaded, no random initialisation), the first time
    (the file is hashed) and again (its hashes remembered). Top-level keys: the file, again."""
    import timm
    from safetensors.torch import save_file

    from featcache.backbones.registry import resolve_backbone
    from tests.fakedata import make_pku

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "small"
        make_pku(root, i2i_prompts=1, t2i_prompts=1, per_generator=2)  # 4 + 6 generated + 1 prompt (+1) images
        checkpoint = Path(tmp) / f"{name}.safetensors"
        state = timm.create_model(resolve_backbone(name).arch, pretrained=False).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
        del state
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "xdg")}  # a memo of its own: "first" is cold
        runs = {"random": ["--random-weights"], "file_first": ["--weights", str(checkpoint)],
                "file_again": ["--weights", str(checkpoint)]}
        for label, weights in runs.items():
            (root / "featcache.h5").unlink(missing_ok=True)
            start = time.perf_counter()
            run = subprocess.run([sys.executable, str(REPO / "cli.py"), "extract", "--backbone", name, *weights,
                                  "--quiet", "--device", device], cwd=root, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
            if run.returncode:
                out[label] = {"error": run.stderr.strip()[-300:]}
                continue
            loop = float(re.search(r"in ([0-9.]+) s", run.stdout).group(1))
            out[label] = {"wall_seconds": wall, "loop_seconds": loop, "startup_seconds": wall - loop}
    return {**out.get("file_again", {}), "runs": out}


def measure(folder: Path, name: str, batch_size: int, workers: int, device, precision: str) -> dict:
    import torch

    from featcache.backbones import load_backbone
    from featcache.datasets import load_dataset
    from featcache.devices import to_channels_last
    from featcache.extract import extract

    samples = load_dataset("pku-aigiqa-4k", folder)
    paths, _, _ = samples.distinct_images()
    backbone = load_backbone(name, random_weights=True)
    extractor = to_channels_last(backbone.extractor().to(device), device)
    autocast = torch.float16 if device.type == "cuda" else None
    start = time.perf_counter()
    batches = [batch for _, batch, _ in _loader(folder, paths, backbone, batch_size, workers, device.type == "cuda")]
    decode_cpu = len(paths) / (time.perf_counter() - start)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        extractor(to_channels_last(batches[0].to(device), device))
        sync()
        start = time.perf_counter()
        for batch in batches:
            extractor(to_channels_last(batch.to(device, non_blocking=True), device)).float().cpu()
        sync()
    forward = len(paths) / (time.perf_counter() - start)
    del batches
    row = {"backbone": name, "batch_size": batch_size, "workers": workers, "images": len(paths),
           "decode_cpu_images_per_s": decode_cpu, "bare_forward_images_per_s": forward}
    try:
        row["decode_gpu_images_per_s"] = gpu_decode(folder, paths, backbone, batch_size, device)
    except Exception as exc:  # recorded; the extract measurements below still run
        row["decode_gpu_images_per_s"], row["decode_gpu_error"] = None, f"{type(exc).__name__}: {exc}"[:300]
    rates, features = {}, {}
    for decode in ("cpu", "gpu"):  # Pillow in the workers; torchvision (nvjpeg on CUDA) in the main process
        with tempfile.TemporaryDirectory() as tmp:
            result = extract(samples, folder, backbone, Path(tmp) / "c.h5", batch_size=batch_size, workers=workers,
                             device=str(device), precision=precision, progress=False, decode=decode)
            rates[decode] = result.images_per_second
            with h5py.File(Path(tmp) / "c.h5", "r") as f:
                features[decode] = f[f"features/{backbone.id}/emb"][()].astype(np.float64)
    a, b = features["cpu"], features["gpu"]
    cosine = _cosine(a, b)
    default = "gpu" if device.type == "cuda" else "cpu"  # what --decode auto picks
    row.update({"extract_images_per_s": rates[default], "extract_decode_cpu_images_per_s": rates["cpu"],
                "extract_decode_gpu_images_per_s": rates["gpu"], "decode_paths_min_cosine_random_weights": float(cosine.min()),
                "decode_paths_median_cosine_random_weights": float(np.median(cosine))})
    row["extract_vs_bare_forward"] = row["extract_images_per_s"] / forward
    decode_best = max(v for v in (decode_cpu, row["decode_gpu_images_per_s"]) if v)
    row["extract_vs_min_forward_decode"] = row["extract_images_per_s"] / min(forward, decode_best)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes [every core]")
    parser.add_argument("--backbones", default=",".join(PAPER))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON [benchmarks/results]")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which no new measurement starts (what is left is listed as skipped)")
    args = parser.parse_args()
    began = time.perf_counter()
    import torch

    from featcache.backbones import load_backbone
    from featcache.devices import resolve_device

    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    precision = "fp16" if device.type == "cuda" else "fp32"
    rows, extras, skipped = [], {}, []
    name = "gpu" if device.type == "cuda" else "gpu_cpu"

    def save() -> Path:  # after every measurement: a run stopped by a time limit keeps what it measured
        return save_json(name, {"machine": machine(), "images": args.images, "size": args.size, "runs": rows,
                                "per_backbone": extras, "skipped": skipped}, args.out)

    def time_left() -> bool:
        return args.deadline is None or time.perf_counter() - began < args.deadline

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = make_folder(Path(tmp), args.images, args.size)
        print(f"synth folder of {args.images} images made once in {time.perf_counter() - start:.0f} s; "
              f"{workers} workers, {device}", flush=True)
        try:
            from featcache.datasets import load_dataset

            paths = load_dataset("pku-aigiqa-4k", folder).distinct_images()[0]
            extras["decode_paths_cosine_lite0_fp32"] = decode_agreement(folder, paths, device)
        except Exception as exc:  # lite0's weights are a separate package (featcache[lite0])
            extras["decode_paths_cosine_lite0_fp32"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(f"decode paths agree (lite0, fp32): {extras['decode_paths_cosine_lite0_fp32']}", flush=True)
        save()
        for backbone_name in args.backbones.split(","):
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                if not time_left():
                    skipped.append(f"{backbone_name} batch {batch_size}")
                    continue
                try:
                    row = measure(folder, backbone_name, batch_size, workers, device, precision)
                except Exception as exc:  # one failure must not lose the other measurements
                    rows.append({"backbone": backbone_name, "batch_size": batch_size,
                                 "error": f"{type(exc).__name__}: {exc}"[:500]})
                    print(f"{backbone_name:<24} batch {batch_size:>4}: FAILED {rows[-1]['error']}", flush=True)
                    save()
                    continue
                rows.append(row)
                save()
                gpu = row["decode_gpu_images_per_s"]
                gpu_text = "n/a" if gpu is None else f"{gpu:.0f}"
                print(f"{backbone_name:<24} batch {batch_size:>4}: decode CPU {row['decode_cpu_images_per_s']:7.0f}  "
                      f"GPU {gpu_text:>7}  forward {row['bare_forward_images_per_s']:7.0f}  "
                      f"extract {row['extract_images_per_s']:7.0f} img/s  ({row['extract_vs_bare_forward']:.2f} x "
                      f"forward, {row['extract_vs_min_forward_decode']:.2f} x min(forward, decode)); extract "
                      f"--decode cpu {row['extract_decode_cpu_images_per_s']:.0f}, gpu "
                      f"{row['extract_decode_gpu_images_per_s']:.0f}; cosine cpu vs gpu decode (random weights) min "
                      f"{row['decode_paths_min_cosine_random_weights']:.4f}, median "
                      f"{row['decode_paths_median_cosine_random_weights']:.4f}", flush=True)
            if args.skip_startup and args.skip_finetune:
                continue
            if not time_left():
                skipped.append(f"{backbone_name} start-up and fine-tuning step")
                continue
            info = {} if args.skip_startup else startup_seconds(backbone_name, args.device)
            if not args.skip_finetune:
                try:
                    backbone = load_backbone(backbone_name, random_weights=True)
                    info["finetune_fp32_seconds_per_image"] = finetune_step(backbone, device, 32, "fp32")
                    info["finetune_bf16_seconds_per_image"] = finetune_step(backbone, device, 32, "bf16")
                    del backbone
                except Exception as exc:
                    info["finetune_error"] = f"{type(exc).__name__}: {exc}"[:500]
            extras[backbone_name] = info
            save()
            print(f"{backbone_name:<24} start-up {info.get('startup_seconds', float('nan')):.1f} s "
                  f"{info.get('error', '')}; fine-tuning step "
                  f"{1000 * info.get('finetune_fp32_seconds_per_image', float('nan')):.2f} ms/img fp32, "
                  f"{1000 * info.get('finetune_bf16_seconds_per_image', float('nan')):.2f} ms/img bf16", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"wrote {save()}" + (f"; skipped (deadline): {', '.join(skipped)}" if skipped else ""))


if __name__ == "__main__":
    main()
