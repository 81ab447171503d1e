"""taskrank ML core: datasets, encoders, TextEmb, SEmb and TaskEmb. Knows nothing of HTTP or Celery."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskrank")  # the one version: pyproject.toml's, from the installed metadata
except PackageNotFoundError:  # a bare checkout that was never installed
    __version__ = "0+unknown"
