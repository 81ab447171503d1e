"""The one exception type of the source-task library, so callers (API, CLI) can map it to a clear message."""


class LibraryError(Exception):
    """A library operation cannot proceed: unknown task, incompatible model, inconsistent index, ..."""
