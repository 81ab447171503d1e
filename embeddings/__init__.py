"""taskrank ML core: datasets, encoders, TextEmb, SEmb and TaskEmb. Knows nothing of HTTP or Celery."""

__version__ = "0.1.0"
