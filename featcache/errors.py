"""One exception type for every user-facing failure: the CLI prints its message as one line and exits 2."""


class FeatcacheError(Exception):
    """A bad input or state the user can fix; the message names the file or row."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class FeatcacheWarning(UserWarning):
    """Something worth telling the user that does not stop the run (printed as one 'warning:' line)."""
