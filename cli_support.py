"""What the commands of cli.py share: the one printer (`echo`), the `featcache` group's exit rules (one-line errors,
Ctrl-C and SIGTERM), and the options and helpers several commands take (--cache, the dataset options, the
cross-validation and --select options, the progress bar, the run's provenance)."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import warnings
from pathlib import Path

import click

from featcache import __version__, interrupts
from featcache.backbones.pooling import POOLINGS
from featcache.defaults import DEFAULT_CACHE, pick
from featcache.errors import FeatcacheError
from featcache.untrusted import printable


def echo(message: object = "", **kwargs) -> None:
    """click.echo with control characters and escape sequences escaped: every line a command prints may hold names
    from other people's files (tabs and line breaks kept)."""
    click.echo(printable(message, newlines=True), **kwargs)


def one_line_warning(message, category, filename, lineno, file=None, line=None):
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


class FeatcacheGroup(click.Group):
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
        showwarning, warnings.showwarning = warnings.showwarning, one_line_warning
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


def cache_option(text: str = f"HDF5 cache [./{DEFAULT_CACHE}, or featcache.toml's cache]."):
    """--cache: the one name of the cache file in every command that reads or writes one."""
    return click.option("--cache", type=click.Path(dir_okay=False), help=text)


def admit_pixels(max_pixels: int) -> None:
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


def command_line() -> str:
    return "featcache " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def dataset_options(f):
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


def name_and_pool(backbone: str, pool: str | None) -> tuple[str, str | None]:
    """`--backbone NAME/POOL` (the form fit and predict take, e.g. lite0/multilevel) as NAME and POOL; a pooling
    given both ways must agree. A name whose last part is no pooling (a hub id such as hf-hub:org/model) is kept."""
    name, _, last = backbone.rpartition("/")
    if not name or last not in POOLINGS:
        return backbone, pool
    if pool is not None and pool != last:
        raise FeatcacheError(f"--backbone {backbone} names pooling {last!r} but --pool is {pool!r}; give it once")
    return name, last


class SizeOrNative(click.ParamType):
    """--image-size: a positive number of pixels, or 'native' (as `featcache.backbones.parse_view` reads it)."""

    name = "N|native"

    def convert(self, value, param, ctx):
        from featcache.backbones.views import parse_view

        try:
            size, _ = parse_view(value)
        except FeatcacheError:
            self.fail(f"{value!r}: a size in pixels (at least 1, e.g. 448) or 'native'", param, ctx)
        return "native" if size is None else size


def name_pool_and_view(backbone: str, pool: str | None, image_size, crops: int | None,
                       max_side: int | None) -> tuple[str, str | None, object, int | None, int | None]:
    """`--backbone NAME/POOL/VIEW` (the short form fit takes, e.g. lite0/multilevel/native or lite0/paper/224x5) as
    NAME, POOL and the view's --image-size, --crops and --max-side; an option given both ways must agree. Without a
    view part, as `name_and_pool`."""
    from featcache.backbones.views import DEFAULT_MAX_SIDE, parse_id_part

    head, _, last = backbone.rpartition("/")
    view = parse_id_part(last) if head.rpartition("/")[2] in POOLINGS else None
    if view is None:
        return (*name_and_pool(backbone, pool), image_size, crops, max_side)
    name, pool = name_and_pool(head, pool)
    if view["kind"] == "centre" and "@" in last:
        raise FeatcacheError(f"--backbone {backbone}: the view {last} gives a --max-side, which applies to native "
                             "and crops only (the centre crop resizes to the backbone's size)")
    wanted = {"--image-size": "native" if view["kind"] == "native" else str(view["size"]),
              "--crops": view["crops"],
              "--max-side": view["max_side"] if view["kind"] != "centre" and view["max_side"] != DEFAULT_MAX_SIDE
              else None}
    given = {"--image-size": None if image_size is None else str(image_size), "--crops": crops,
             "--max-side": max_side}
    for option, value in given.items():
        if value is not None and wanted[option] is not None and str(value) != str(wanted[option]):
            raise FeatcacheError(f"--backbone {backbone} names the view {last} but {option} is {value}; give it once")
    return (name, pool, given["--image-size"] or wanted["--image-size"],
            crops if crops is not None else wanted["--crops"],
            max_side if max_side is not None else wanted["--max-side"])


def names(value: str | None) -> list[str] | None:
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


HELP = _stage2_help()


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


JOBS = _Jobs()


def cv_options(f):
    for option in reversed([
        click.option("--split", type=click.Choice(HELP["splits"]), default="group", show_default=True,
                     help=HELP["split_help"]),
        click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True),
        click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--subset", default="all", show_default=True, help="all, t2i, i2i or a generator name."),
        click.option("--train-on", help="--split cross: generator or subset to train on."),
        click.option("--test-on", help="--split cross: generator or subset to test on."),
        click.option("--hold-out-prompts", is_flag=True,
                     help="--split cross: also remove the test samples' prompts from training."),
        click.option("--jobs", type=JOBS, default="auto", show_default=True,
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


def progress(quiet: bool, total_hint: str):
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


def run_info(cache: str) -> dict:
    import platform
    from importlib.metadata import version

    import numpy

    info = {"command": command_line(), "featcache": __version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "scikit-learn": version("scikit-learn"), "torch": version("torch"),
            "cache": str(Path(cache).resolve())}
    try:
        from featcache.store import open_read

        with open_read(cache) as f:
            info["cache_attrs"] = {k: str(v) for k, v in f.attrs.items()}
    except FeatcacheError:
        pass
    return info


def annotation_from(config: dict, dataset, root, annotation, columns) -> dict:
    """The annotation fit and bench compare the cached labels with, named as for `extract` (options, then
    featcache.toml); what is not named is detected in the current folder or taken from the cache."""
    cols = None
    if columns:
        from featcache.datasets.generic_csv import parse_columns

        cols = parse_columns(list(columns))
    cols = cols or config.get("columns")
    return {"root": pick(root, config, "root"), "annotation": pick(annotation, config, "annotation"),
            "dataset": pick(dataset, config, "dataset"), "options": {"columns": cols} if cols else None}


def split_options(cv: dict) -> tuple[dict, dict]:
    """CV options for the API, and the output options for the report."""
    output = {k: cv.pop(k) for k in ("out", "overwrite", "plot", "quiet", "no_figures")}
    cv["floors"] = not cv.pop("no_floors")
    return cv, output


def select_options(what: str):
    """--select and --inner-folds, for fit and bench (which also chooses the backbone)."""
    def decorate(f):
        f = click.option("--inner-folds", type=click.IntRange(min=2), default=3, show_default=True,
                         help="Inner folds of --select; the selection's fits grow with them.")(f)
        return click.option("--select", is_flag=True,
                            help=f"Also score the nested selection: per target and sample set, the {what} chosen "
                                 "inside each outer training fold by inner cross-validation (same grouping), scored "
                                 "on the outer folds; the number to quote (results.json `selection`).")(f)
    return decorate


def echo_selection(results) -> None:
    """Under the table: the nested selection's outer score per target and sample set (--select)."""
    from regressors.selection import selection_line

    for entry in results.selection or []:
        echo(selection_line(entry))
