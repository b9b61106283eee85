"""The `featcache` command: a thin layer that parses, calls the Python API of the same names, and prints.

`main` is the console script (`featcache = cli:main`, also `python -m cli`) and what in-process callers (click's
CliRunner) invoke. Every command that reads or writes a cache names it with `--cache` (default ./featcache.h5, or
featcache.toml's `cache`); an option that takes a comma list is named in the singular (`--mode nr,fr`). What
several commands share (the printer, the exit rules, common options) is in cli_support.py."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click

from featcache import __version__
from featcache.untrusted import printable
from featcache.backbones.pooling import POOLINGS, pooling_help
from featcache.decode import DECODE_CHOICES, DECODE_HELP
from featcache.defaults import DEFAULT_CACHE, load_config, pick
from featcache.errors import FeatcacheError
from cli_support import HELP, JOBS, FeatcacheGroup, SizeOrNative, admit_pixels, annotation_from, cache_option, \
    command_line, cv_options, dataset_options, echo, echo_selection, load_samples_from_options, name_pool_and_view, \
    names, progress, run_info, select_options, split_options


@click.group(cls=FeatcacheGroup)
@click.version_option(__version__, prog_name="featcache")
def main():
    """Perceptual quality of AI-generated images: extract frozen-backbone features once, fit heads many times."""
    # process-wide, once, before any thread starts: loky replaces a worker that grew or idled and resubmits its
    # jobs, and its warning of that says nothing the user can act on
    warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor",
                            category=UserWarning)


@main.command()
@dataset_options
@click.option("--backbone", help="Registered name or any timm model (see `featcache backbones`), optionally "
                                 "with its pooling and view, as fit takes it (lite0/multilevel, "
                                 "lite0/multilevel/native, lite0/paper/224x5).")
@click.option("--pool", type=click.Choice(list(POOLINGS)), default=None,
              help=f"Feature definition [{next(iter(POOLINGS))}]: {pooling_help()}.")
@cache_option()
@click.option("--image-size", type=SizeOrNative(),
              help="Input size in pixels, overriding the backbone's (the centre crop's, or each crop's with --crops); "
                   "native = each whole image at its own resolution, its shorter side capped by --max-side "
                   "(models that need a fixed size refuse it).")
@click.option("--crops", type=int, default=None, metavar="K",
              help="Feed K crops of the input size from the full-resolution image (a fixed, seeded layout covering "
                   "it) and store their combination (mean; multilevel: pooled statistics). See docs/views.md.")
@click.option("--max-side", type=int, default=None, metavar="N",
              help="Shorter side cap of --image-size native and --crops, in pixels [1024].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward [32]; native and crops batches also hold at most as many pixels as this many "
                   "centre crops.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes, 0 = in the main process [every usable core].")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [auto].")
@click.option("--decode", type=click.Choice(DECODE_CHOICES), default=None,
              help=DECODE_HELP + " [as the cache recorded for this backbone, else auto].")
@click.option("--jpeg-draft/--no-jpeg-draft", default=None,
              help="Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale while its shorter side stays at least 2x the "
                   "resize size (512 px for 256), then resize it as a full decode would be (faster; pixels differ "
                   "slightly, recorded in the cache) [as the cache recorded for this backbone, else on].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
              help="auto = fp16 autocast on CUDA, fp32 on the CPU.")
@click.option("--shard", metavar="I/N", help="Extract only share I of N (contiguous rows); merge afterwards.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local checkpoint (.safetensors, .pth, .npz).")
@click.option("--random-weights", is_flag=True, help="Random weights, for mechanics tests only.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images with more pixels, or more once resized for the backbone (a 12000x1 strip becomes "
                   "3072000x256), and --crops K whose K crops hold more [100 megapixels].")
@click.option("--verify", is_flag=True, help="Hash the images' contents (sha256) and compare them by content, not by "
                                             "size and modification time (e.g. a copied dataset).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(dataset, root, annotation, columns, backbone, pool, cache, image_size, crops, max_side, batch_size,
            workers, device, decode, jpeg_draft, precision, shard, weights, random_weights, max_pixels, verify, quiet):
    """Run a frozen backbone once over every distinct image into the HDF5 cache (resumable)."""
    from featcache.backbones import load_backbone, parse_view
    from featcache.extract import extract as run_extract, parse_shard
    from featcache.images import DEFAULT_MAX_PIXELS

    admit_pixels(max_pixels or DEFAULT_MAX_PIXELS)
    config = load_config()
    backbone = pick(backbone, config, "backbone")
    if not backbone:
        raise FeatcacheError("--backbone is required (e.g. --backbone lite0; see `featcache backbones`)")
    backbone, pool, image_size, crops, max_side = name_pool_and_view(backbone, pick(pool, config, "pool"),
                                                                     image_size, crops, max_side)
    size, view = parse_view(image_size, crops, max_side)
    samples, root = load_samples_from_options(config, dataset, root, annotation, columns)
    model = load_backbone(backbone, pool or next(iter(POOLINGS)), weights, random_weights, size, view)
    cache = pick(cache, config, "cache", DEFAULT_CACHE)
    result = run_extract(samples, root, model, cache, batch_size=pick(batch_size, config, "batch_size", 32),
                         workers=pick(workers, config, "workers"), device=pick(device, config, "device", "auto"),
                         precision=precision, shard=parse_shard(shard), max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                         progress=not quiet, command=command_line(), verify=verify,
                         decode=pick(decode, config, "decode", None),
                         jpeg_draft=pick(jpeg_draft, config, "jpeg_draft", None))
    if result.rows_written == 0:
        echo(f"{result.backbone_id}: {result.rows_done_before}/{result.rows_in_shard} rows already in "
                   f"{cache}; nothing to do")
    else:
        echo(f"{result.backbone_id}: wrote {result.rows_written} rows to {cache} in {result.seconds:.1f} s "
                   f"({result.images_per_second:.1f} images/s; {result.rows_done_before} were already there)")


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@cache_option(f"The merged cache, created or extended [./{DEFAULT_CACHE}, or featcache.toml's cache].")
def merge(shards, cache):
    """Merge shard caches into one, equal to an unsharded extraction."""
    from featcache.merge import merge as run_merge

    result = run_merge(list(shards), pick(cache, load_config(), "cache", DEFAULT_CACHE))
    for bid, (done, total) in result.rows.items():
        note = "" if done == total else f"  ({total - done} rows still missing: run the missing shards)"
        echo(f"{bid}: {done}/{total} rows{note}")


@main.command()
@cache_option()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--check", is_flag=True, help="Verify the cache: every backbone complete, every done row finite, "
                                            "tables and attributes complete, no image changed on disk since its "
                                            "features were extracted (exit 2 on a problem).")
def info(cache, as_json, check):
    """Show the samples, subsets, targets and backbones of a cache."""
    from featcache.info import cache_info, format_info
    from featcache.annotation_lookup import dataset_root
    from featcache.cache_check import check_cache
    from featcache.image_changes import images_on_disk

    cache = pick(cache, load_config(), "cache", DEFAULT_CACHE)
    result = cache_info(cache)
    if check:
        result["problems"] = check_cache(cache, require_complete=True)
        disk = images_on_disk(cache, dataset_root(cache))  # one stat per image with features, no read
        if disk is not None:
            result["problems"] += [line for line in (disk.changed_line(),) if line]
            result["notes"] = [line for line in (disk.missing_line(), disk.root_missing_line()) if line]
            result["images_compared"] = not disk.root_missing
    echo(json.dumps(result, indent=2) if as_json else format_info(result))
    if check and result["problems"]:
        raise FeatcacheError(f"{cache}: {len(result['problems'])} problem(s): {'; '.join(result['problems'])}")


@main.command()
@cache_option()
def repair(cache):
    """Drop half-created backbones, mark non-finite rows for extraction again, delete leftover temporary files."""
    from featcache.cache_check import repair as run_repair

    cache = pick(cache, load_config(), "cache", DEFAULT_CACHE)
    result = run_repair(cache)
    for bid in result.dropped:
        echo(f"dropped half-created backbone {bid}")
    for bid, rows in result.rows_reset.items():
        echo(f"{bid}: {rows} non-finite rows will be extracted again")
    for tmp in result.temporaries:
        echo(f"deleted leftover temporary file {tmp}")
    if not (result.dropped or result.rows_reset or result.temporaries):
        echo(f"{cache}: nothing to repair")


@main.command()
def backbones():
    """List the registered backbones (any other timm model name works too)."""
    from featcache.backbones import list_backbones

    echo(f"{'name':<24}{'timm weights':<46}{'size':>5}{'dim':>6}  source: feature")
    for spec in list_backbones():
        echo(f"{spec.name:<24}{spec.timm_name:<46}{spec.input_size:>5}{spec.dim:>6}  {spec.source}: {spec.note}")
    echo("any other timm model name: its pre-logits features with timm's data config")
    for spec in POOLINGS.values():
        echo(f"--pool {spec.name}: {spec.doc}")


@main.command()
def datasets():
    """List the dataset adapters and the annotation files they detect."""
    from featcache.datasets import list_datasets

    for adapter in list_datasets():
        files = ", ".join(adapter.annotation_names) or "--annotation FILE"
        echo(f"{adapter.name:<15}{files:<42}{adapter.description}")


@main.command()
@cache_option()
@click.option("--backbone", help="Backbone id, name (vgg19, lite0/multilevel, lite0/multilevel/native) or prefix; "
                                 "A+B fuses several ids of the cache (docs/fusion.md) [the only one present].")
@click.option("--mode", help=f"Comma list of {HELP['modes']} [the paper's nr,fr,pr that the selection can feed].")
@click.option("--target", help="Comma list of targets [all in the cache].")
@click.option("--regressor", help=f"Comma list of {HELP['regressors']} [{HELP['default_regressors']}]; the "
                                  "label-only floors are fitted beside any list unless --no-floors.")
@cv_options
@select_options("mode x regressor")
@click.option("--save-head", type=click.Path(dir_okay=False),
              help="Also train on every selected sample and save the head (one mode, target, regressor).")
@dataset_options
def fit(cache, backbone, mode, target, regressor, save_head, dataset, root, annotation, columns, **cv):
    """Cross-validate heads on cached features; write results.json, predictions.csv, report.md and figures."""
    import time

    from regressors.fit import fit as run_fit
    from regressors.report import missing_folders, output_name, remove_if_empty, run_folder, \
        write_results
    from regressors.summary_text import format_table

    start = time.perf_counter()
    config = load_config()
    cv, output = split_options(cv)
    cache = pick(cache, config, "cache", DEFAULT_CACHE)
    folder = run_folder(output["out"], output["overwrite"])
    inside = save_head is not None and Path(save_head).resolve().parent == folder.resolve()  # any spelling
    if inside and output_name(Path(save_head).name):
        raise FeatcacheError(f"--save-head {save_head}: the run writes a file of that name in {folder}; choose "
                             "another name")
    if save_head is not None and (not inside or folder.is_dir()):
        from featcache.outputs import check_output_file, config_file, read_by_a_cache

        check_output_file(save_head, "--save-head", output["overwrite"], (*read_by_a_cache(cache), config_file()))
    made = missing_folders(folder) if inside else []
    if made:  # --save-head into the run's own (new) folder: it must exist before the head is saved
        folder.mkdir(parents=True)
    own_head = inside and (bool(made) or not any(folder.iterdir()))  # in a folder new or empty before this run
    update, close = progress(output["quiet"], "fit")
    try:
        from regressors.cache_data import backbone_query

        try:
            outcome = run_fit(cache, backbone_query(pick(backbone, config, "backbone"), config.get("pool")),
                              names(mode), names(target),
                              names(regressor), save_head=save_head, on_progress=update,
                              annotation_from=annotation_from(config, dataset, root, annotation, columns), **cv)
        finally:
            close()
        results = outcome.results
        echo(f"{results.config['backbone'] or 'labels only'}: {cv['split']} split, subset {cv['subset']}, "
                   f"{len(results.folds)} fitted folds")
        echo(format_table(results.summary))
        echo_selection(results)
        paths = write_results(results, folder,
                              title=f"featcache fit: {results.config['backbone'] or 'labels only'}",
                              plot=output["plot"], run_info=run_info(cache), figures=not output["no_figures"])
    except BaseException:
        if own_head:  # the run's own folder: a head saved before the results goes, so the same command runs again
            Path(save_head).unlink(missing_ok=True)
        remove_if_empty(made)
        raise
    if outcome.head:
        meta = outcome.head
        echo(f"saved {meta['regressor'] if 'regressor' in meta else ''} head for {meta['mode']}/"
                   f"{meta['target']} on {meta['n_train']} samples to {outcome.head_path}")
    echo(f"done in {time.perf_counter() - start:.1f} s; results in {folder}/ ({paths['report'].name}, "
               f"{paths['json'].name}, {paths['predictions'].name})")


@main.command()
@cache_option()
@click.option("--backbone", "backbones", help="Comma list of ids or names, each possibly a fusion A+B "
                                                "(docs/fusion.md) [every backbone in the cache, unfused].")
@click.option("--mode", "modes", help=f"Comma list of {HELP['modes']} [the paper's that the selection can feed].")
@click.option("--target", "targets", help="Comma list of targets [all in the cache].")
@click.option("--regressor", "regressors", help=f"Comma list of {HELP['regressors']} "
                                                f"[{HELP['default_regressors']}]; the label-only floors are fitted "
                                                "beside any list unless --no-floors.")
@cv_options
@select_options("backbone x mode x regressor")
@dataset_options
def bench(cache, backbones, modes, targets, regressors, dataset, root, annotation, columns, **cv):
    """Run a grid (backbones x modes x targets x regressors) over one cache into one table."""
    import time

    from regressors.fit import bench as run_bench
    from regressors.report import run_folder, write_results
    from regressors.summary_text import format_table

    start = time.perf_counter()
    cv, output = split_options(cv)
    config = load_config()
    cache = pick(cache, config, "cache", DEFAULT_CACHE)
    folder = run_folder(output["out"], output["overwrite"], root="featcache-bench")
    update, close = progress(output["quiet"], "bench")
    try:
        results = run_bench(cache, names(backbones), names(modes), names(targets), names(regressors),
                            on_progress=update,
                            annotation_from=annotation_from(config, dataset, root, annotation, columns), **cv)
    finally:
        close()
    echo(format_table(results.summary))
    echo_selection(results)
    paths = write_results(results, folder, title="featcache bench", plot=output["plot"], run_info=run_info(cache),
                          figures=not output["no_figures"])
    echo(f"done in {time.perf_counter() - start:.1f} s; results in {folder}/ ({paths['report'].name}, "
               f"{paths['json'].name})")


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["md", "latex", "csv"]), default="md", show_default=True)
@click.option("--metric", default="srcc,plcc", show_default=True,
              help="Comma list of srcc, plcc, plcc_logistic, krcc, rmse, srcc_pooled, plcc_pooled, "
                   "rmse_pooled.")
@click.option("--ci", is_flag=True, help="SRCC, PLCC and RMSE as pooled values with their 95% interval over "
                                       "prompt groups (csv: low and high columns).")
@click.option("--sd", is_flag=True, help="Each fold-mean cell ± its sample SD over the folds (one repeat) or over "
                                       "the repeats' means (csv: an SD column).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the table to a file instead of printing it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def table(results, fmt, metric, ci, sd, out, overwrite):
    """Pivot results.json files (or run folders) into the paper's layout: method x backbone x regressor rows,
    target x metric columns, floors as reference rows; bold only for a best that the corrected resampled t-test
    separates from the runner-up at 5%, † for rows tied with the best, ° below the best floor."""
    from featcache.outputs import check_output_file, write_text_atomically
    from regressors.results_files import load_results
    from regressors.tables import render_table

    if out:
        reads = tuple(Path(r) / "results.json" if Path(r).is_dir() else Path(r) for r in results)
        check_output_file(out, "--out", overwrite, reads)
    if ci and sd:
        raise click.UsageError("--ci and --sd: choose one (the interval is of the pooled value, the SD of the fold "
                               "means)")
    text = render_table(load_results(list(results)), names(metric), fmt, ci=ci, sd=sd)
    if out:
        write_text_atomically(out, text)
        echo(f"wrote {out}")
    else:
        echo(text, nl=False)


@main.command()
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--head", required=True, type=click.Path(dir_okay=False), help="A head saved by fit --save-head.")
@click.option("--prompt-image", type=click.Path(dir_okay=False), help="The image prompt of IMAGES (FR/PR heads).")
@dataset_options
@cache_option(f"Reuse features of images already in this cache [./{DEFAULT_CACHE} if present, or "
               "featcache.toml's cache].")
@click.option("--backbone", help="The backbone that extracts new images, as fit takes it (id, name, lite0/multilevel, "
                                 "prefix; A+B for a fused head); it must name the head's backbone [the head's own].")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local weights, if the head's came from a file.")
@click.option("--mode", help="Refuse unless the head was trained for this mode.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="scores.csv", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def predict(images, head, prompt_image, dataset, root, annotation, columns, cache, backbone, weights, mode, device,
            batch_size, out, overwrite):
    """Score images with a saved head: IMAGE files, a FOLDER of images (no annotation needed), or a whole
    database (--root/--dataset: SRCC and PLCC against its labels are printed). Cached features are reused."""
    from featcache.errors import FeatcacheWarning
    from regressors.heads import images_in_folder, predict_paths, score_column, unpaired_warning, write_scores
    from regressors.modes import get_mode
    from regressors.metrics import quality_metrics

    from featcache.outputs import check_output_file, config_file, read_by_a_cache
    from regressors.heads import recorded_weights
    from regressors.heads_io import read_metadata

    from featcache.images import DEFAULT_MAX_PIXELS

    admit_pixels(DEFAULT_MAX_PIXELS)
    config = load_config()
    check_output_file(out, "--out", overwrite, (head, prompt_image, weights, config_file()))
    labels = None
    if len(images) == 1 and Path(images[0]).is_dir():
        base = images[0]
        paths = images_in_folder(base)
        prompts = [str(Path(prompt_image).resolve()) if prompt_image else ""] * len(paths)
    elif images:
        base = "."
        paths = [str(Path(i)) for i in images]
        prompts = [str(Path(prompt_image)) if prompt_image else ""] * len(paths)
    elif dataset or root or annotation:
        from featcache.untrusted import check_inside_root

        samples, base = load_samples_from_options(config, dataset, root, annotation, columns)
        paths, prompts = samples.image, samples.prompt_image
        check_inside_root(base, sorted(set(paths) | {p for p in prompts if p}))  # as extract refuses them
        labels = samples.targets
    else:
        raise FeatcacheError("give IMAGE paths, a FOLDER of images, or --dataset/--root for a whole database")
    cache = pick(cache, config, "cache", DEFAULT_CACHE)
    if Path(out).exists():  # with --overwrite: still never over what this run reads
        source = samples.source if labels is not None else None
        try:
            weights_read = weights or recorded_weights(read_metadata(head), cache)
        except Exception:  # not a head: predict_paths says so
            weights_read = None
        check_output_file(out, "--out", overwrite, (*read_by_a_cache(cache), source, weights_read,
                                                    *(Path(base) / p for p in paths),
                                                    *(Path(base) / p for p in prompts if p)))
    scores, meta = predict_paths(head, base, paths, prompts, backbone=backbone, weights=weights, mode=mode,
                                 device=device, batch_size=batch_size, cache=cache)
    unpaired = sum(not p for p in prompts)
    if labels is None and unpaired and get_mode(meta["mode"]).uses_prompt_image:  # never silent: see README
        folders = [base] if base != "." else sorted({str(Path(p).parent) for p in paths})
        warnings.warn(unpaired_warning(head, meta["mode"], unpaired, folders), FeatcacheWarning)
    truth = labels.get(meta["target"]) if labels else None
    write_scores(out, paths, prompts, scores, meta["target"], truth)
    for path, score in list(zip(paths, scores))[:10]:
        echo(f"{score:8.4f}  {printable(path)}")
    if len(paths) > 10:
        echo(f"... {len(paths) - 10} more")
    reused = f"; {meta['reused']} images from the cache, {meta['extracted']} extracted" if meta["reused"] else ""
    echo(f"wrote {len(paths)} scores ({printable(score_column(meta['target']))}, {meta['regressor']} "
               f"{meta['mode']} head) to {out}{reused}")
    if truth is not None:
        metrics = quality_metrics(truth, scores)
        echo(f"against {printable(meta['target'])} of the annotation: SRCC {metrics['srcc']:.3f}, PLCC "
                   f"{metrics['plcc']:.3f}, RMSE {metrics['rmse']:.3f} ({len(paths)} images; in-sample if the "
                   "head was trained on them)")


@main.command()
@click.option("--photos", type=click.Path(exists=True, file_okay=False),
              help="Folder of pristine photos (PNG/JPEG); each becomes one content group [the photos that ship in "
                   "scikit-image].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Benchmark folder (PKU layout).")
@click.option("--views", type=click.IntRange(min=1), default=4, show_default=True,
              help="Views per prompt and generator.")
@click.option("--size", type=click.IntRange(min=8), default=256, show_default=True, help="Side of every written image.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Write into a folder that already holds files.")
def synth(photos, out, views, size, seed, overwrite):
    """Build a synthetic quality benchmark with exact labels (quality from the distortion level, correspondence
    from the framing drift) in the pku-aigiqa-4k layout. The labels are synthetic, not human opinions."""
    import tempfile

    from featcache.synth import bundled_photos, synth as run_synth

    with tempfile.TemporaryDirectory() as tmp:
        photos = photos or bundled_photos(Path(tmp) / "photos")
        made = run_synth(photos, out, views=views, size=size, seed=seed, overwrite=overwrite)
    echo(f"{made.samples} rated images from {made.photos} photos ({made.i2i_samples} with an image prompt) "
               f"in {made.out}; labels in {made.annotation}")


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Output folder; a rerun into it writes only the demo's own files (photos/, synth/, the report and "
                   "its figures); a symbolic link planted at photos/ or synth/ is refused.")
@click.option("--views", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--folds", type=click.IntRange(min=2), default=4, show_default=True)
@click.option("--jobs", type=JOBS, default=2, show_default=True, help="Parallel fitting processes, or auto.")
@click.option("--photos", type=click.Path(exists=True, file_okay=False),
              help="Your own photos instead of scikit-image's.")
@click.option("--mode", "modes", help=f"Comma list of {HELP['modes']} [every mode].")
@click.option("--regressor", "regressors", help=f"Comma list of {HELP['regressors']} [the default grid].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out, views, folds, jobs, photos, modes, regressors, quiet):
    """The whole pipeline offline: synth benchmark, lite0 extraction in both poolings, NR/FR/PR fits, report."""
    from regressors.demo import run_demo

    run_demo(out, views=views, folds=folds, jobs=jobs, photos=photos, modes=names(modes),
             regressors=names(regressors), progress=not quiet, echo=echo)



@main.command()
@click.argument("caches", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--backbone", help="Backbone id, name or prefix that names the same id in every cache [the only one].")
@click.option("--mode", help=f"Comma list of {HELP['modes']} [nr].")
@click.option("--target", help="Comma list of targets, as the first cache names them [every one in all caches].")
@click.option("--regressor", default="ridge", show_default=True, help="One regressor that reads features.")
@click.option("--target-map", "target_map", multiple=True, metavar="A:NAME=B:NAME",
              help="Targets of different names that are the same quantity; A and B are caches' file stems or paths "
                   "(repeat the option for more).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Folds of the diagonal's CV.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=JOBS, default="auto", show_default=True, help="Parallel fitting processes of the CV.")
@click.option("--device", default="auto", show_default=True, help="Where the MLP trains.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Results folder [a fresh featcache-transfer/<date-time>-<id>/].")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out.")
def transfer(caches, backbone, mode, target, regressor, target_map, folds, repeats, seed, jobs, device, out,
             overwrite):
    """Train on all of each database, test on all of each other one; each database's own cross-validated score
    on the diagonal. Writes transfer.json, transfer.csv, transfer.md and transfer.tex."""
    from regressors.report import run_folder
    from regressors.transfer import transfer as run_transfer, write_transfer
    from regressors.transfer_table import render_transfer

    folder = run_folder(out, overwrite, root="featcache-transfer")
    results = run_transfer(list(caches), backbone, names(mode), names(target), regressor, list(target_map),
                           folds=folds, repeats=repeats, seed=seed, jobs=jobs, device=device)
    payload = results.to_dict()
    echo(render_transfer(payload), nl=False)
    paths = write_transfer(results, folder, run_info={"command": command_line(), "featcache": __version__})
    echo(f"results in {folder}/ ({paths['json'].name}, {paths['csv'].name}, {paths['table'].name})")


if __name__ == "__main__":
    main()
