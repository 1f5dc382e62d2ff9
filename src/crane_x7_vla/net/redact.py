"""Keep secrets out of logs.

Secrets reach us only through environment variables; any log line is passed through :func:`redact`, which
replaces each secret's value (if set and long enough to be meaningful) by ``***``. This is a last line of
defence: the code never formats a secret into a message in the first place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

# Environment variables whose values must never be printed.
SECRET_ENV: tuple[str, ...] = ("TS_AUTHKEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
# Shorter values would redact ordinary words ("1", "true") without protecting anything.
_MIN_SECRET_LEN = 6


def secret_values(env: Mapping[str, str], names: Iterable[str] = SECRET_ENV) -> list[str]:
    """The non-trivial secret values present in ``env``, longest first (so overlaps redact fully)."""
    values = {env[n] for n in names if len(env.get(n, "")) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the given secret values from every record's final message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg = redact(record.getMessage(), self._secrets)
            record.args = None
        return True


def setup_logging(name: str, env: Mapping[str, str], level: int = logging.INFO) -> logging.Logger:
    """A stderr logger ``[name] message`` whose output is redacted of the secrets found in ``env``."""
    logger = logging.getLogger(f"crane_x7_vla.net.{name}")
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
    handler.addFilter(RedactingFilter(secret_values(env)))
    logger.addHandler(handler)
    return logger
