"""Who may call the worker's state-changing endpoints: a bearer token from the settings.

A worker bound to loopback answers this machine only and needs no token (``flead demo`` and the
tests run that way); bound beyond it, ``load_settings`` refuses to start without
``FLEAD_WEB_TOKEN`` (``settings.web_exposure_problem``). When a token is set every POST needs it,
on loopback too. Reading pages (``/flead/stats/``, the live page) needs none: they change nothing.
"""

from __future__ import annotations

UNAUTHORIZED = {"error": "this endpoint needs `Authorization: Bearer <FLEAD_WEB_TOKEN>`"}


def bearer_token_ok(authorization: str | None, token: str) -> bool:
    """A request's ``Authorization`` header carries ``token`` (compared in constant time); any
    request is fine when no token is set (a loopback-only worker, ``web_exposure_problem``).

    >>> bearer_token_ok(None, ""), bearer_token_ok("Bearer s3cret", "s3cret"), bearer_token_ok("Bearer x", "s3cret")
    (True, True, False)
    >>> bearer_token_ok(None, "s3cret"), bearer_token_ok("s3cret", "s3cret")
    (False, False)
    """
    import hmac

    if not token:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
