"""What the CLI's commands share: loading a dataset from arguments, progress bars, output, the library
service and its error handling. Both `app.cli` and `app.cli_library` import from here (never each other)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from library.settings import Settings


def column_map(text: str | None) -> dict[str, str] | None:
    """`text=review,label=stars` -> {"text": "review", "label": "stars"}."""
    if not text:
        return None
    mapping = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--columns expects field=column pairs like text=review, got {part!r}")
        mapping[key.strip()] = value.strip()
    return mapping


def load_target(args: argparse.Namespace, settings: Settings):  # -> embeddings.data.Dataset
    from embeddings.data import LoadLimits, load_dataset

    limits = LoadLimits(max_rows=settings.max_rows, max_text_chars=settings.max_text_chars)
    return load_dataset(args.path, task_type=args.task_type, split=args.split,
                        column_map=column_map(args.columns), limits=limits)


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """The CLI face of `on_progress(done, total)`."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="ex", dynamic_ncols=True, file=sys.stderr, disable=None)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def echo(text: str = "", err: bool = False) -> None:
    """The CLI's output: a line on stdout (results) or stderr (messages)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def library_service(settings: Settings, ensure_default: bool = True):  # -> library.service.LibraryService
    from library.service import LibraryService

    service = LibraryService.from_settings(settings, ensure_default=ensure_default)
    report = service.default_import
    if report is not None and report.added:
        echo(f"imported the default library ({len(report.added)} source tasks)", err=True)
    return service


def library_errors(
    func: Callable[[argparse.Namespace, Settings], int],
) -> Callable[[argparse.Namespace, Settings], int]:
    """LibraryError is a user-facing error: one line on stderr, exit 1 (app.cli.main handles ValueError)."""

    def wrapped(args: argparse.Namespace, settings: Settings) -> int:
        from library.errors import LibraryError

        try:
            return func(args, settings)
        except LibraryError as exc:
            echo(f"error: {exc}", err=True)
            return 1

    wrapped.__name__ = func.__name__
    return wrapped


def text_table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    right = right or set()
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            (str(c).rjust(w) if i in right else str(c).ljust(w))
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
