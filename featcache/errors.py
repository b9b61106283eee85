"""One exception type for every user-facing failure: the CLI prints its message as one line and exits 2."""

import difflib
from collections.abc import Iterable


class FeatcacheError(Exception):
    """A bad input or state the user can fix; the message names the file or row."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class FeatcacheWarning(UserWarning):
    """Something worth telling the user that does not stop the run (printed as one 'warning:' line)."""


NAMED_AT_MOST = 20


def named(items: Iterable[str], separator: str = ", ", most: int = NAMED_AT_MOST) -> str:
    """The items of an error line, in order: all of them up to `most`, then "and N more", so that fixing what one
    line names does not take one run per three files."""
    items = list(items)
    shown = separator.join(items[:most])
    return shown if len(items) <= most else f"{shown}{separator}and {len(items) - most} more"


def unknown_name(kind: str, name: str, choices: Iterable[str], where: str = "",
                 aliases: dict[str, str] | None = None) -> FeatcacheError:
    """'unknown mode 'fr2'; did you mean 'fr'? (modes: ...)': the one shape of every unknown-name error.
    `aliases` maps short forms to choices (a backbone's arch to its full id) for the "did you mean"."""
    choices = list(choices)
    lookup = {**{c: c for c in choices}, **(aliases or {})}
    lowered = {}  # case is no distance: 'VGG19' means 'vgg19'
    for key, choice in lookup.items():
        lowered.setdefault(key.lower(), choice)
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    hint = f"; did you mean {lowered[close[0]]!r}?" if close else ""
    return FeatcacheError(f"unknown {kind} {name!r}{hint} ({kind}s{where}: {', '.join(choices)})")
