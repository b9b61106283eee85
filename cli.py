"""The `featcache` command: a thin layer that parses, calls the Python API of the same names, and prints.

`main` is the console script (`featcache = cli:main`, also `python -m cli`) and what in-process callers (click's
CliRunner) invoke. Every command that reads or writes a cache names it with `--cache` (default ./featcache.h5, or
featcache.toml's `cache`); an option that takes a comma list is named in the singular (`--mode nr,fr`)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path

import click

from featcache import __version__, interrupts
from featcache.untrusted import printable
from featcache.backbones.pooling import POOLINGS, pooling_help
from featcache.decode import DECODE_CHOICES, DECODE_HELP
from featcache.defaults import DEFAULT_CACHE, load_config, pick
from featcache.errors import FeatcacheError


def echo(message: object = "", **kwargs) -> None:
    """click.echo with control characters and escape sequences escaped: every line a command prints may hold names
    from other people's files (tabs and line breaks kept)."""
    click.echo(printable(message, newlines=True), **kwargs)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    echo(f"warning: {message}", err=True)


# What Ctrl-C means, per command: only the writers of a cache keep work and resume.
INTERRUPTED = {
    "extract": "interrupted: every row written so far is kept; run the same command to resume",
    "merge": "interrupted: every row merged so far is kept; run the same command to finish",
    "repair": "interrupted: the cache is as it was or fully repaired; run the same command again",
}


def _runs_a_local_cluster(command: click.Command | None) -> bool:
    """Whether `command` (one with a --backend option) started a dask cluster whose workers are threads of this
    process."""
    if command is None or not any(p.name == "backend" for p in command.params):
        return False
    from regressors.cv import in_process_cluster

    return in_process_cluster()


def _exit_now(code: int) -> None:
    """Exit with `code` at once, the in-process dask cluster closed. Its worker threads may be inside a torch fit
    that Ctrl-C cannot stop, and finalising the interpreter under them aborts the process. Every `with` and
    `finally` of the command has run by now (caches closed, locks released), and a fit writes its results only at
    its end, so nothing written is lost."""
    from regressors.cv import close_in_process_clusters

    close_in_process_clusters()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Group(click.Group):
    """The `featcache` group. A FeatcacheError prints one line on stderr and exits 2; Ctrl-C exits 130 and SIGTERM
    143 after one line that fits the command. Signal handlers, the warning format and the recorded signal are the
    caller's again when an in-process call returns; a run from the process's own command line (the console script,
    `python -m cli`) keeps further signals ignored after an interruption, so its exit cannot be cut short."""

    ends_process = False

    def main(self, args=None, prog_name=None, **kwargs):
        self.ends_process = args is None  # click parses sys.argv: this process's own command line
        return super().main(args, prog_name, **kwargs)

    def invoke(self, ctx):
        ends_process = self.ends_process
        showwarning, warnings.showwarning = warnings.showwarning, _one_line_warning
        interrupts.reset()
        handlers = interrupts.install()  # the caller's, put back when the command ends
        try:
            return super().invoke(ctx)
        except FeatcacheError as exc:
            echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            if handlers:  # the command is ending: a later signal must not break its exit
                for signum in (signal.SIGINT, signal.SIGTERM):
                    handlers.setdefault(signum, signal.getsignal(signum))
                    signal.signal(signum, signal.SIG_IGN)
                if ends_process:
                    handlers = {}  # ignored until the process is gone
            name = ctx.invoked_subcommand
            local_cluster = _runs_a_local_cluster(self.get_command(ctx, name) if name else None)
            if local_cluster:  # its log lines would follow the one line while it stops
                from regressors.cv import silence_in_process_clusters

                silence_in_process_clusters()
            echo(INTERRUPTED.get(name or "", "interrupted"), err=True)
            code = 143 if isinstance(exc, interrupts.Terminated) else 130
            if local_cluster:
                _exit_now(code)
            sys.exit(code)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            interrupts.reset()
            if not ends_process:
                warnings.showwarning = showwarning


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="featcache")
def main():
    """Perceptual quality of AI-generated images: extract frozen-backbone features once, fit heads many times."""
    # process-wide, once, before any thread starts: loky replaces a worker that grew or idled and resubmits its
    # jobs, and its warning of that says nothing the user can act on
    warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor",
                            category=UserWarning)


def _cache_option(text: str = f"HDF5 cache [./{DEFAULT_CACHE}, or featcache.toml's cache]."):
    """--cache: the one name of the cache file in every command that reads or writes one."""
    return click.option("--cache", type=click.Path(dir_okay=False), help=text)


def _admit_pixels(max_pixels: int) -> None:
    """A command that decodes images applies featcache's own pixel limit (checked per file from its header): Pillow's
    limit is raised to it for this process, before any decode thread or worker starts, and Pillow's warning for files
    between its limit and twice it is left out, since featcache refuses every file over `max_pixels` itself.
    torchvision's notice that its JPEG decoder (used by `--decode torch`) moves to TorchCodec is left out too: the
    decoder works as documented, and the notice says nothing a user of featcache can act on."""
    from PIL import Image

    from featcache.images import raise_pillow_limit

    raise_pillow_limit(max_pixels)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)


def _command_line() -> str:
    return "featcache " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _dataset_options(f):
    for option in reversed([
        click.option("--dataset", help="Adapter name (see `featcache datasets`); detected from the root if omitted."),
        click.option("--root", type=click.Path(file_okay=False), help="Dataset folder [config or current folder]."),
        click.option("--annotation", type=click.Path(dir_okay=False), help="Annotation file, if not the default."),
        click.option("--col", "columns", multiple=True, metavar="ROLE=COLUMN",
                     help="For --dataset csv: image=, target= (repeatable), prompt_image=, text=, group=, "
                          "generator=, image_dir=, prompt_dir=."),
    ]):
        f = option(f)
    return f


def load_samples_from_options(config: dict, dataset, root, annotation, columns):
    from featcache.datasets import load_dataset
    from featcache.datasets.generic_csv import parse_columns

    options = {}
    cols = parse_columns(list(columns)) if columns else config.get("columns")
    if cols:
        options["columns"] = cols
    root = pick(root, config, "root", ".")
    return load_dataset(pick(dataset, config, "dataset"), root, pick(annotation, config, "annotation"), options), root


@main.command()
@_dataset_options
@click.option("--backbone", help="Registered name or any timm model (see `featcache backbones`), optionally "
                                 "with its pooling (lite0/multilevel, as fit takes it).")
@click.option("--pool", type=click.Choice(list(POOLINGS)), default=None,
              help=f"Feature definition [{next(iter(POOLINGS))}]: {pooling_help()}.")
@_cache_option()
@click.option("--image-size", type=click.IntRange(min=1), help="Crop size, overriding the backbone's.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per forward [32].")
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
                   "3072000x256) [100 megapixels].")
@click.option("--verify", is_flag=True, help="Hash the images' contents (sha256) and compare them by content, not by "
                                             "size and modification time (e.g. a copied dataset).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(dataset, root, annotation, columns, backbone, pool, cache, image_size, batch_size, workers, device,
            decode, jpeg_draft, precision, shard, weights, random_weights, max_pixels, verify, quiet):
    """Run a frozen backbone once over every distinct image into the HDF5 cache (resumable)."""
    from featcache.backbones import load_backbone
    from featcache.extract import extract as run_extract, parse_shard
    from featcache.images import DEFAULT_MAX_PIXELS

    _admit_pixels(max_pixels or DEFAULT_MAX_PIXELS)
    config = load_config()
    backbone = pick(backbone, config, "backbone")
    if not backbone:
        raise FeatcacheError("--backbone is required (e.g. --backbone lite0; see `featcache backbones`)")
    backbone, pool = _name_and_pool(backbone, pick(pool, config, "pool"))
    samples, root = load_samples_from_options(config, dataset, root, annotation, columns)
    model = load_backbone(backbone, pool or next(iter(POOLINGS)), weights, random_weights, image_size)
    cache = pick(cache, config, "cache", DEFAULT_CACHE)
    result = run_extract(samples, root, model, cache, batch_size=pick(batch_size, config, "batch_size", 32),
                         workers=pick(workers, config, "workers"), device=pick(device, config, "device", "auto"),
                         precision=precision, shard=parse_shard(shard), max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                         progress=not quiet, command=_command_line(), verify=verify,
                         decode=pick(decode, config, "decode", None),
                         jpeg_draft=pick(jpeg_draft, config, "jpeg_draft", None))
    if result.rows_written == 0:
        echo(f"{result.backbone_id}: {result.rows_done_before}/{result.rows_in_shard} rows already in "
                   f"{cache}; nothing to do")
    else:
        echo(f"{result.backbone_id}: wrote {result.rows_written} rows to {cache} in {result.seconds:.1f} s "
                   f"({result.images_per_second:.1f} images/s; {result.rows_done_before} were already there)")


def _name_and_pool(backbone: str, pool: str | None) -> tuple[str, str | None]:
    """`--backbone NAME/POOL` (the form fit and predict take, e.g. lite0/multilevel) as NAME and POOL; a pooling
    given both ways must agree. A name whose last part is no pooling (a hub id such as hf-hub:org/model) is kept."""
    name, _, last = backbone.rpartition("/")
    if not name or last not in POOLINGS:
        return backbone, pool
    if pool is not None and pool != last:
        raise FeatcacheError(f"--backbone {backbone} names pooling {last!r} but --pool is {pool!r}; give it once")
    return name, last


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_cache_option(f"The merged cache, created or extended [./{DEFAULT_CACHE}, or featcache.toml's cache].")
def merge(shards, cache):
    """Merge shard caches into one, equal to an unsharded extraction."""
    from featcache.merge import merge as run_merge

    result = run_merge(list(shards), pick(cache, load_config(), "cache", DEFAULT_CACHE))
    for bid, (done, total) in result.rows.items():
        note = "" if done == total else f"  ({total - done} rows still missing: run the missing shards)"
        echo(f"{bid}: {done}/{total} rows{note}")


@main.command()
@_cache_option()
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
@_cache_option()
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


def _names(value: str | None) -> list[str] | None:
    """None when the option was not given (the API then chooses); an empty list when it was given empty."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _stage2_help():
    """Choices and help of the stage-2 options, read from the spec tables."""
    from regressors.modes import MODES
    from regressors.registry import REGRESSORS, default_regressors
    from regressors.splits import SPLITS

    return {
        "modes": ", ".join(MODES),
        "regressors": ", ".join(REGRESSORS),
        "default_regressors": ",".join(default_regressors()),
        "splits": list(SPLITS),
        "split_help": "; ".join(f"{s.name}: {s.doc}" for s in SPLITS.values()),
    }


_HELP = _stage2_help()


class _Jobs(click.ParamType):
    """--jobs: a number or auto (cv.resolve_jobs)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or auto", param, ctx)


_JOBS = _Jobs()


def _cv_options(f):
    for option in reversed([
        click.option("--split", type=click.Choice(_HELP["splits"]), default="group", show_default=True,
                     help=_HELP["split_help"]),
        click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True),
        click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--subset", default="all", show_default=True, help="all, t2i, i2i or a generator name."),
        click.option("--train-on", help="--split cross: generator or subset to train on."),
        click.option("--test-on", help="--split cross: generator or subset to test on."),
        click.option("--hold-out-prompts", is_flag=True,
                     help="--split cross: also remove the test samples' prompts from training."),
        click.option("--jobs", type=_JOBS, default="auto", show_default=True,
                     help="Parallel fitting processes (joblib); -1 = every core; auto = every core unless the run "
                          "is small (one process)."),
        click.option("--backend", type=click.Choice(["loky", "dask", "ray"]), default=None,
                     help="joblib backend; dask and ray reach a cluster (optional extras)."),
        click.option("--device", default="auto", show_default=True,
                     help="Where the MLP trains: auto (a GPU when torch sees one), cpu, cuda or cuda:N."),
        click.option("--out", type=click.Path(file_okay=False),
                     help="Results folder [a fresh featcache-results/<date-time>-<id>/]."),
        click.option("--overwrite", is_flag=True,
                     help="Replace an earlier run's files in a non-empty --out (and an existing --save-head file)."),
        click.option("--plot", "plot", metavar="REGRESSOR",
                     help="Regressor whose out-of-fold predictions are drawn [the first feature-reading one]."),
        click.option("--no-floors", "no_floors", is_flag=True,
                     help="Fit only the regressors named: leave out the label-only floors (generator-mean, "
                          "sibling-mean, prompt-mean) that every table otherwise shows beside them; the table and "
                          "report then say that the run has no floors."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option("--no-figures", "no_figures", is_flag=True, help="Skip the PNG figures (faster)."),
        click.option("--labels", type=click.Choice(["check", "cache", "annotation"]), default="check",
                     show_default=True, help="When the annotation's labels differ from the cache's: refuse (check), "
                                             "keep the cached ones, or fit the annotation's."),
    ]):
        f = option(f)
    return f


def _progress(quiet: bool, total_hint: str):
    """A tqdm bar over fitted members (stderr, only on a terminal unless asked), as an on_progress callback."""
    if quiet or not sys.stderr.isatty():
        def announce(done, total):
            if done == 0 and total and not quiet:
                echo(f"{total_hint}: {total} heads to fit", err=True)

        return announce, (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=None, unit="fit", desc=total_hint, file=sys.stderr)

    def update(done, total):
        if done == 0 and total:
            bar.write(f"{total_hint}: {total} heads to fit", file=sys.stderr)
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _run_info(cache: str) -> dict:
    import platform
    from importlib.metadata import version

    import numpy

    info = {"command": _command_line(), "featcache": __version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "scikit-learn": version("scikit-learn"), "torch": version("torch"),
            "cache": str(Path(cache).resolve())}
    try:
        from featcache.store import open_read

        with open_read(cache) as f:
            info["cache_attrs"] = {k: str(v) for k, v in f.attrs.items()}
    except FeatcacheError:
        pass
    return info


def _annotation_from(config: dict, dataset, root, annotation, columns) -> dict:
    """The annotation fit and bench compare the cached labels with, named as for `extract` (options, then
    featcache.toml); what is not named is detected in the current folder or taken from the cache."""
    cols = None
    if columns:
        from featcache.datasets.generic_csv import parse_columns

        cols = parse_columns(list(columns))
    cols = cols or config.get("columns")
    return {"root": pick(root, config, "root"), "annotation": pick(annotation, config, "annotation"),
            "dataset": pick(dataset, config, "dataset"), "options": {"columns": cols} if cols else None}


def _split_options(cv: dict) -> tuple[dict, dict]:
    """CV options for the API, and the output options for the report."""
    output = {k: cv.pop(k) for k in ("out", "overwrite", "plot", "quiet", "no_figures")}
    cv["floors"] = not cv.pop("no_floors")
    return cv, output


def _select_options(what: str):
    """--select and --inner-folds, for fit and bench (which also chooses the backbone)."""
    def decorate(f):
        f = click.option("--inner-folds", type=click.IntRange(min=2), default=3, show_default=True,
                         help="Inner folds of --select; the selection's fits grow with them.")(f)
        return click.option("--select", is_flag=True,
                            help=f"Also score the nested selection: per target and sample set, the {what} chosen "
                                 "inside each outer training fold by inner cross-validation (same grouping), scored "
                                 "on the outer folds; the number to quote (results.json `selection`).")(f)
    return decorate


def _echo_selection(results) -> None:
    """Under the table: the nested selection's outer score per target and sample set (--select)."""
    from regressors.selection import selection_line

    for entry in results.selection or []:
        echo(selection_line(entry))


@main.command()
@_cache_option()
@click.option("--backbone", help="Backbone id, name (vgg19, lite0/multilevel) or prefix [the only one present].")
@click.option("--mode", help=f"Comma list of {_HELP['modes']} [the paper's nr,fr,pr that the selection can feed].")
@click.option("--target", help="Comma list of targets [all in the cache].")
@click.option("--regressor", help=f"Comma list of {_HELP['regressors']} [{_HELP['default_regressors']}]; the "
                                  "label-only floors are fitted beside any list unless --no-floors.")
@_cv_options
@_select_options("mode x regressor")
@click.option("--save-head", type=click.Path(dir_okay=False),
              help="Also train on every selected sample and save the head (one mode, target, regressor).")
@_dataset_options
def fit(cache, backbone, mode, target, regressor, save_head, dataset, root, annotation, columns, **cv):
    """Cross-validate heads on cached features; write results.json, predictions.csv, report.md and figures."""
    import time

    from regressors.fit import fit as run_fit
    from regressors.report import missing_folders, output_name, remove_if_empty, run_folder, \
        write_results
    from regressors.summary_text import format_table

    start = time.perf_counter()
    config = load_config()
    cv, output = _split_options(cv)
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
    update, close = _progress(output["quiet"], "fit")
    try:
        from regressors.cache_data import backbone_query

        try:
            outcome = run_fit(cache, backbone_query(pick(backbone, config, "backbone"), config.get("pool")),
                              _names(mode), _names(target),
                              _names(regressor), save_head=save_head, on_progress=update,
                              annotation_from=_annotation_from(config, dataset, root, annotation, columns), **cv)
        finally:
            close()
        results = outcome.results
        echo(f"{results.config['backbone'] or 'labels only'}: {cv['split']} split, subset {cv['subset']}, "
                   f"{len(results.folds)} fitted folds")
        echo(format_table(results.summary))
        _echo_selection(results)
        paths = write_results(results, folder,
                              title=f"featcache fit: {results.config['backbone'] or 'labels only'}",
                              plot=output["plot"], run_info=_run_info(cache), figures=not output["no_figures"])
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
@_cache_option()
@click.option("--backbone", "backbones", help="Comma list of ids or names [every backbone in the cache].")
@click.option("--mode", "modes", help=f"Comma list of {_HELP['modes']} [the paper's that the selection can feed].")
@click.option("--target", "targets", help="Comma list of targets [all in the cache].")
@click.option("--regressor", "regressors", help=f"Comma list of {_HELP['regressors']} "
                                                f"[{_HELP['default_regressors']}]; the label-only floors are fitted "
                                                "beside any list unless --no-floors.")
@_cv_options
@_select_options("backbone x mode x regressor")
@_dataset_options
def bench(cache, backbones, modes, targets, regressors, dataset, root, annotation, columns, **cv):
    """Run a grid (backbones x modes x targets x regressors) over one cache into one table."""
    import time

    from regressors.fit import bench as run_bench
    from regressors.report import run_folder, write_results
    from regressors.summary_text import format_table

    start = time.perf_counter()
    cv, output = _split_options(cv)
    config = load_config()
    cache = pick(cache, config, "cache", DEFAULT_CACHE)
    folder = run_folder(output["out"], output["overwrite"], root="featcache-bench")
    update, close = _progress(output["quiet"], "bench")
    try:
        results = run_bench(cache, _names(backbones), _names(modes), _names(targets), _names(regressors),
                            on_progress=update,
                            annotation_from=_annotation_from(config, dataset, root, annotation, columns), **cv)
    finally:
        close()
    echo(format_table(results.summary))
    _echo_selection(results)
    paths = write_results(results, folder, title="featcache bench", plot=output["plot"], run_info=_run_info(cache),
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
    from regressors.tables import load_results, render_table

    if out:
        reads = tuple(Path(r) / "results.json" if Path(r).is_dir() else Path(r) for r in results)
        check_output_file(out, "--out", overwrite, reads)
    if ci and sd:
        raise click.UsageError("--ci and --sd: choose one (the interval is of the pooled value, the SD of the fold "
                               "means)")
    text = render_table(load_results(list(results)), _names(metric), fmt, ci=ci, sd=sd)
    if out:
        write_text_atomically(out, text)
        echo(f"wrote {out}")
    else:
        echo(text, nl=False)


@main.command()
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--head", required=True, type=click.Path(dir_okay=False), help="A head saved by fit --save-head.")
@click.option("--prompt-image", type=click.Path(dir_okay=False), help="The image prompt of IMAGES (FR/PR heads).")
@_dataset_options
@_cache_option(f"Reuse features of images already in this cache [./{DEFAULT_CACHE} if present, or "
               "featcache.toml's cache].")
@click.option("--backbone", help="The backbone that extracts new images, as fit takes it (id, name, lite0/multilevel, "
                                 "prefix); it must name the head's backbone [the head's own].")
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

    _admit_pixels(DEFAULT_MAX_PIXELS)
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
@click.option("--jobs", type=_JOBS, default=2, show_default=True, help="Parallel fitting processes, or auto.")
@click.option("--photos", type=click.Path(exists=True, file_okay=False),
              help="Your own photos instead of scikit-image's.")
@click.option("--mode", "modes", help=f"Comma list of {_HELP['modes']} [every mode].")
@click.option("--regressor", "regressors", help=f"Comma list of {_HELP['regressors']} [the default grid].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out, views, folds, jobs, photos, modes, regressors, quiet):
    """The whole pipeline offline: synth benchmark, lite0 extraction in both poolings, NR/FR/PR fits, report."""
    from regressors.demo import run_demo

    run_demo(out, views=views, folds=folds, jobs=jobs, photos=photos, modes=_names(modes),
             regressors=_names(regressors), progress=not quiet, echo=echo)


if __name__ == "__main__":
    main()
