"""The `glnet-export` command line: the top layer, imported by nothing else in the project.

Each command parses its options, calls the library function that does the work, and
renders the typed result (rich for people, `--json` for machines). `glnet_export.cli`
composes the commands."""

from artifacts import __version__

__all__ = ["__version__"]
