"""Write until committed: the sink's guarantee that no offset is committed past an unwritten row.

``write_with_retry(fn, rows)`` returns only once ``fn`` (a write that returns after its commit)
has succeeded: while the database is unreachable it retries with exponential backoff (0.5 s
doubling to 30 s, with jitter so that several workers do not hammer a restarting server in
step). The sink runs it in a thread of the event loop's executor, so the worker keeps serving
heartbeats meanwhile. A stop event, if given, ends the wait with ``WriteAborted``: the caller
commits nothing and Kafka redelivers the batch, which the natural-key inserts make harmless.

Errors that retrying cannot fix (a refused row, a missing column) are raised at once: the
sink isolates refused rows itself (``sink.PostgresSink``), and waiting would stall for good.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BASE_DELAY_S = 0.5
MAX_DELAY_S = 30.0
JITTER = 0.2  # each delay is scaled by a factor in [1 - JITTER, 1 + JITTER]


class WriteAborted(RuntimeError):
    """The stop event was set before the rows could be written: acknowledge nothing."""


def backoff_delays(
    base: float = BASE_DELAY_S, cap: float = MAX_DELAY_S, jitter: float = JITTER, rng: random.Random | None = None
) -> Iterator[float]:
    """0.5, 1, 2, 4 ... up to ``cap`` seconds, each drawn from [d(1 - jitter), min(cap, d(1 + jitter))]
    so delays stay spread out even once they reach the cap."""
    rng = rng or random.Random()
    step = 0
    while True:
        nominal = min(cap, base * (2**step))
        yield rng.uniform(nominal * (1.0 - jitter), min(cap, nominal * (1.0 + jitter)))
        if nominal < cap:
            step += 1


def is_transient(err: BaseException) -> bool:
    """True for errors that mean "the database is not reachable right now"."""
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return True
    # OperationalError: refused/lost connections, server shutting down, deadlocks,
    # serialization failures. InterfaceError: a connection closed under us.
    return isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError)


_URL_CREDS = re.compile(r"(\w+://[^:/@\s]+):[^@\s]*@")


def describe_error(err: BaseException) -> str:
    """A one-line reason safe to log: no SQL, no parameters, no password."""
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    text = _URL_CREDS.sub(r"\1:***@", text)
    text = re.sub(r"password=\S+", "password=***", text)
    return f"{type(orig).__name__}: {text[:300]}"


def write_with_retry(
    fn: Callable[[T], R],
    rows: T,
    stop_event: threading.Event | None = None,
    *,
    base_delay: float = BASE_DELAY_S,
    max_delay: float = MAX_DELAY_S,
    what: str | None = None,
) -> R:
    """Call ``fn(rows)`` until it returns (it returns only after its commit).

    Returns what ``fn`` returned. Raises ``WriteAborted`` if ``stop_event`` is
    set while waiting, and re-raises at once any error that is not transient.
    """
    name = what or getattr(fn, "__name__", "write")
    delays = backoff_delays(base_delay, max_delay)
    attempt = 0
    while True:
        if stop_event is not None and stop_event.is_set():
            raise WriteAborted(f"{name}: stopped before the rows were written")
        attempt += 1
        try:
            result = fn(rows)
        except Exception as err:  # classified just below
            if not is_transient(err):
                raise
            delay = next(delays)
            log.warning(
                "%s failed (attempt %d, database unreachable?): %s; retrying in %.1f s",
                name,
                attempt,
                describe_error(err),
                delay,
            )
            if stop_event is not None:
                if stop_event.wait(delay):
                    raise WriteAborted(f"{name}: stopped after {attempt} failed attempts") from err
            else:
                threading.Event().wait(delay)
            continue
        if attempt > 1:
            log.info("%s succeeded after %d attempts", name, attempt)
        return result
