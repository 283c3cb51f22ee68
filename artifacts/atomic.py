"""Write artifacts so that a failure or Ctrl-C never leaves a half-written file behind.

Everything is written to temporary names in the target's folder (same file system, so
the final rename is atomic) and renamed into place only when complete; a good artifact
from an earlier run is replaced only by a complete new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import GlnetExportError


class OutputPathError(GlnetExportError):
    """The output location cannot be written."""


def check_writable(target: Path) -> None:
    """Fail early, before minutes of work, when `target` cannot be written."""
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OutputPathError(f"{target}: is a folder, expected a file name")
    if not folder.is_dir():
        reason = "is not a folder" if folder.exists() else "does not exist"
        raise OutputPathError(f"{target}: {folder} {reason}")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(f"{target}: file exists and is not writable")
    # os.access answers yes to root everywhere, also on read-only mounts and in /proc:
    # creating (and removing) a file in the folder is the test that holds.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"{target}: cannot write in folder {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_outputs(*targets: Path) -> Iterator[list[Path]]:
    """Yield temporary paths for `targets`; rename them into place only on success.

    With several targets (an OpenVINO .xml and its .bin) the first one is renamed last, so
    a reader that opens it finds its companions already complete.
    """
    temps: list[Path] = []
    try:
        for target in targets:
            check_writable(target)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        # mkstemp makes its files private (0600); an artifact gets the mode any new file
        # would get, so that a serving process running as another user can read it.
        mode = 0o666 & ~_umask()
        for temp, target in reversed(list(zip(temps, targets, strict=True))):
            os.chmod(temp, mode)
            os.replace(temp, target)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
