"""The project's error types and the one-line rendering of any exception."""

from __future__ import annotations

import re


class GlnetExportError(Exception):
    """A known failure with a message fit for one line on stderr."""


class ExportError(GlnetExportError):
    """An export could not produce a correct artifact."""


class OptionError(GlnetExportError, ValueError):
    """An option value that cannot work (e.g. an input size below 32)."""


class ArtifactLoadError(GlnetExportError, ValueError):
    """An artifact file that exists but cannot be read (empty, truncated, another format)."""


class LabelledDataError(GlnetExportError, ValueError):
    """Labelled images that cannot be used: no images, an unknown class, a missing label file."""


# OpenVINO's messages open with where in its C++ sources they were raised, which says
# nothing to a user: "Exception from src/inference/src/cpp/core.cpp:84:".
_SOURCE_LOCATION = re.compile(r"^(Exception from )?\S+\.(cpp|hpp|cc|h):\d+:?$")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, or its class name."""
    for line in str(exc).splitlines():
        if line.strip() and not _SOURCE_LOCATION.match(line.strip()):
            text = line.strip()
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return exc.__class__.__name__
