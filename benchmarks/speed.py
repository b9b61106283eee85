"""Speed: start-up of `featcache extract`; extraction against the bare forward and decoding alone, for the 224 centre
crop, native resolution and 5 crops; stage 2 on 4000 rows; fine-tuning cost.

    python benchmarks/speed.py [--images 256] [--size 512] [--backbone lite0] [--view 224,native,224x5]
                               [--skip-stage2] [--device auto]
    python benchmarks/speed.py --startup-only [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from common import REPO, machine, photos_folder, save_json  # noqa: E402  (sets sys.path)


def _twelve_images(folder: Path) -> None:
    """12 small JPEGs and a CSV annotation: enough for a real extraction, too few for the forward to dominate."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(12):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((320, 256), Image.BILINEAR).save(folder / f"{k}.jpg", quality=90)
        rows.append(f"{k}.jpg,{k / 4:.2f}")
    (folder / "ratings.csv").write_text("file,mos\n" + "\n".join(rows) + "\n")


def _median_seconds(command: list[str], repeats: int, before=None, cwd: Path = REPO) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def startup(args, tmp: Path) -> dict:
    """Wall time of `featcache extract` over 12 images into a fresh cache (start-up: imports, weights, model build,
    worker start, one batch) against `python -c "import torch"`; medians of `repeats` runs each, and
    their ratio."""
    data = tmp / "startup"
    _twelve_images(data)
    cache = tmp / "startup.h5"
    extract = [sys.executable, "cli.py", "extract", "--dataset", "csv", "--root", str(data), "--annotation",
               "ratings.csv", "--col", "image=file", "--col", "target=mos", "--backbone", args.backbone,
               "--cache", str(cache), "--device", args.device, "--quiet"]
    fresh = lambda: cache.unlink(missing_ok=True)  # noqa: E731
    _median_seconds(extract, 1, before=fresh, cwd=args.repo)  # warm the file cache once
    torch_s, torch_runs = _median_seconds([sys.executable, "-c", "import torch"], args.repeats)
    extract_s, extract_runs = _median_seconds(extract, args.repeats, before=fresh, cwd=args.repo)
    return {"import_torch_seconds": torch_s, "extract_12_images_seconds": extract_s,
            "ratio": extract_s / torch_s, "repeats": args.repeats,
            "import_torch_runs": torch_runs, "extract_runs": extract_runs}


def print_startup(result: dict) -> None:
    print(f"start-up (median of {result['repeats']}): python -c 'import torch' {result['import_torch_seconds']:.2f} s; "
          f"featcache extract over 12 images {result['extract_12_images_seconds']:.2f} s = "
          f"{result['ratio']:.2f} x")


VIEWS = {"224": (None, None), "native": ("native", None), "224x5": (None, 5)}  # --view: (--image-size, --crops)


def synth_data(args, tmp: Path):
    """The synth dataset of about `args.images` images of `args.size` px (made once per run)."""
    from featcache.datasets import load_dataset
    from featcache.synth import synth

    folder = tmp / "data"
    photos, source = photos_folder(tmp)
    if not folder.is_dir():
        n_photos = len(list(Path(photos).iterdir()))
        per_photo = 2 * (2 / 3) + 3 * (1 / 3)  # generators per photo, on average
        views = max(1, int(round(args.images / (n_photos * per_photo))))
        synth(photos, folder, views=views, size=args.size, seed=0)
    return load_dataset("pku-aigiqa-4k", folder), folder, source


def extraction(args, tmp: Path, view_name: str = "224") -> dict:
    """One view (`VIEWS`): decoding alone (the extract's own loader and batches, same workers), the bare forward on
    those decoded batches, and `extract` into a fresh cache, on the same images."""
    import torch

    from featcache.backbones import load_backbone, parse_view
    from featcache.devices import resolve_device, to_channels_last
    from featcache.extract import extract
    from featcache.forward import Forwarding, batch_plan, default_workers, forward_pixels, make_loader
    from featcache.image_rows import Decoding, image_rows

    samples, folder, source = synth_data(args, tmp)
    paths, _, _ = samples.distinct_images()
    device = resolve_device(args.device)
    workers = default_workers() if args.workers is None else args.workers
    size, view = parse_view(*VIEWS[view_name])
    backbone = load_backbone(args.backbone, pool=args.pool, random_weights=args.random_weights, image_size=size,
                             view=view)
    extractor = to_channels_last(backbone.extractor().to(device), device)
    precision = "fp16" if device.type == "cuda" else "fp32"
    forwarding = Forwarding(device=device, precision=precision, batch_size=args.batch_size, workers=workers)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # decoding alone (the loader extract builds: same batches, same workers), keeping the tensors for the forward
    dataset, _ = image_rows(backbone, folder, paths, list(range(len(paths))), Decoding(path="pil", jpeg_draft=True),
                            device)
    start = time.perf_counter()
    plan = batch_plan(dataset, args.batch_size, backbone.spec.input_size)
    batches = [batch for _, batch, _ in make_loader(dataset, forwarding, plan)]
    decode_s = time.perf_counter() - start
    # bare forward on the same tensors, already decoded
    with torch.no_grad():
        forward_pixels(extractor, batches[0], device, precision)  # warm-up
        sync()
        start = time.perf_counter()
        for batch in batches:
            forward_pixels(extractor, batch, device, precision).float().cpu()
        sync()
    forward_s = time.perf_counter() - start
    # the real pipeline, into a fresh cache
    result = extract(samples, folder, backbone, tmp / f"speed-{view_name}.h5", batch_size=args.batch_size,
                     workers=workers, device=str(device), decode="cpu", progress=False)
    n = len(paths)
    return {
        "view": view_name, "images": n, "image_size": args.size, "photos": source, "backbone": backbone.id,
        "device": str(device), "batch_size": args.batch_size, "workers": workers, "batches": len(batches),
        "decode_only_images_per_s": n / decode_s, "bare_forward_images_per_s": n / forward_s,
        "extract_images_per_s": result.images_per_second, "extract_seconds": result.seconds,
        "decode_seconds": decode_s, "forward_seconds": forward_s,
        "extract_vs_bare_forward": result.images_per_second / (n / forward_s),
        "extract_vs_decode_plus_forward": result.seconds / (decode_s + forward_s),
        "samples": len(samples),
    }


def print_extraction(speed: dict) -> None:
    print(f"extraction, view {speed['view']}: {speed['images']} images of {speed['image_size']} px, "
          f"{speed['backbone']} on {speed['device']}, batch {speed['batch_size']} ({speed['batches']} batches), "
          f"{speed['workers']} workers")
    print(f"  decoding alone     {speed['decode_only_images_per_s']:8.1f} images/s")
    print(f"  bare forward       {speed['bare_forward_images_per_s']:8.1f} images/s")
    print(f"  featcache extract  {speed['extract_images_per_s']:8.1f} images/s  "
          f"= {speed['extract_vs_bare_forward']:.2f} x bare forward; time = "
          f"{speed['extract_vs_decode_plus_forward']:.2f} x (decoding alone + forward alone)", flush=True)


def stage2(args, tmp: Path) -> dict:
    """The stage-2 grid of benchmarks/stage2.py (4000 rows x 2048-d, NR/FR/PR x 3 targets x 5 folds)."""
    from stage2 import run_grid

    return run_grid(tmp / "s2", jobs=args.jobs, device=args.device if args.device != "auto" else "cpu")


def finetune_cost(args, speed: dict, grid_seconds: float) -> dict:
    """One fine-tuning step (forward + backward + Adam) per image, scaled to the paper's recipe."""
    from gpu import finetune_step

    from featcache.backbones import load_backbone
    from featcache.devices import resolve_device

    device = resolve_device(args.device)
    train_per_image = finetune_step(load_backbone(args.backbone, random_weights=True), device, args.batch_size,
                                    "fp32")
    forward_per_image = 1.0 / speed["bare_forward_images_per_s"]
    # PKU-AIGIQA-4K, paper split, 100 epochs, one model per (mode, target): NR on 3000/1000 generated images;
    # FR on the I2I part, 1200/400 samples of two images; PR on 3000/1000 samples, 1200 of them with a prompt.
    configs = {"nr": (3000, 1000, 1.0), "fr": (1200, 400, 2.0), "pr": (3000, 1000, 1.4)}
    per_epoch = {m: tr * k * train_per_image + te * k * forward_per_image for m, (tr, te, k) in configs.items()}
    table_seconds = 100 * 3 * sum(per_epoch.values())  # 3 targets
    extract_once = 4200 * (1.0 / speed["extract_images_per_s"])
    ours = extract_once + grid_seconds
    return {"train_seconds_per_image": train_per_image, "forward_seconds_per_image": forward_per_image,
            "finetune_table_hours": table_seconds / 3600, "extract_once_seconds": extract_once,
            "stage2_grid_seconds": grid_seconds, "extract_and_fit_seconds": ours,
            "compute_ratio": table_seconds / ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=512, help="side of the synth images (PKU images are 512+)")
    parser.add_argument("--backbone", default="lite0")
    parser.add_argument("--pool", default="paper")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--view", default=",".join(VIEWS),
                        help=f"comma list of the inputs timed: {', '.join(VIEWS)} (centre crop, native, 5 crops)")
    parser.add_argument("--skip-stage2", action="store_true")
    parser.add_argument("--startup-only", action="store_true", help="Measure only the start-up of extract.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per start-up command (the median is kept).")
    parser.add_argument("--repo", type=Path, default=REPO, help="Checkout whose cli.py the start-up runs (to compare "
                        "with another version).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = startup(args, tmp)
        print_startup(start)
        if args.startup_only:
            name = "startup" if args.device != "cuda" else "startup_cuda"
            print(f"wrote {save_json(name, {'machine': machine(), 'startup': start})}")
            return
        views = {name: extraction(args, tmp, name) for name in args.view.split(",")}
        for speed in views.values():
            print_extraction(speed)
        speed = views.get("224") or next(iter(views.values()))
        payload = {"machine": machine(), "startup": start, "extraction": speed, "views": views}
        if not args.skip_stage2:
            print(f"stage 2 on 4000 rows x 2048-d, NR/FR/PR x 3 targets x 5 prompt-disjoint folds, jobs={args.jobs}")
            s2 = stage2(args, tmp)
            print(f"  full grid          {s2['full_grid_seconds']:8.1f} s")
            cost = finetune_cost(args, speed, s2["full_grid_seconds"])
            print(f"fine-tuning (paper recipe, 100 epochs x NR/FR/PR x 3 targets): "
                  f"{cost['finetune_table_hours']:.1f} h; extract once + full grid: "
                  f"{cost['extract_and_fit_seconds']:.0f} s; ratio {cost['compute_ratio']:.0f}x")
            payload.update(stage2=s2, finetune=cost)
        print(f"wrote {save_json('speed' if args.device != 'cuda' else 'speed_cuda', payload)}")


if __name__ == "__main__":
    main()
