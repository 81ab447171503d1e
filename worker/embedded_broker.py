"""The embedded broker: kombu's SQLAlchemy transport, polling its queue tables every 0.1 s.

kombu's virtual transports poll; the default 1 s made every job of `taskrank serve` wait up to a
second to be picked up, and capped a burst of small jobs at about one a second (bench/api_load.py,
phase 2). The SQLAlchemy transport hands its transport options to `create_engine`, so the interval
cannot be set there: it is a class attribute here, registered under its own URL prefix.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

URL_PREFIX = "taskrank-sqla"
POLLING_INTERVAL_S = 0.1


class Transport(SQLAlchemyTransport):
    polling_interval = POLLING_INTERVAL_S


def broker_url(sqla_url: str) -> str:
    """`sqla+sqlite:///x` -> the same database through this transport."""
    TRANSPORT_ALIASES.setdefault(URL_PREFIX, f"{__name__}:Transport")
    return f"{URL_PREFIX}+{sqla_url.removeprefix('sqla+')}"
