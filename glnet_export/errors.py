"""The project's error types and the one-line rendering of any exception."""

from __future__ import annotations


class GlnetExportError(Exception):
    """A known failure with a message fit for one line on stderr."""


class ExportError(GlnetExportError):
    """An export could not produce a correct artifact."""


class OptionError(GlnetExportError, ValueError):
    """An option value that cannot work (e.g. an input size below 32)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, or its class name."""
    for line in str(exc).splitlines():
        if line.strip():
            text = line.strip()
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return exc.__class__.__name__
