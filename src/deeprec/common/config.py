"""The environment-variable contract, kept for older callers: the table is
``deeprec.common.settings.SETTINGS`` (flag, variable, type, default, help, services).

``ENV`` maps every DEEPREC_* variable to its help; ``env(name, default, kind)`` reads one
with a caller-given default (new code: ``settings.value(name)``, the table's default).
"""

from __future__ import annotations

import os

from .settings import BY_ENV

ENV: dict[str, str] = {name: setting.help for name, setting in BY_ENV.items()}


def env(name: str, default, kind=str):
    """``name`` from the environment converted by ``kind``, else ``default``."""
    setting = BY_ENV.get(name)
    if setting is None:
        raise KeyError(f"{name} is not a deeprec setting (deeprec/common/settings.py)")
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return setting.parse(raw) if kind is setting.kind else kind(raw)
    except ValueError as err:
        raise SystemExit(f"deeprec: {name}={raw!r}: {err}") from None
