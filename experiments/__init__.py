"""One-question measurement scripts, not part of the wheel: each answers one question about the
files glnet-export writes (how fast, how close to a target, what int8 buys), builds every file
through the format table (`export.formats.build`), reuses the product's runners and timing, and
is run from the repository root as `python -m experiments.NAME` (`--help` says what it asks).
Each writes its results as a dated file, docs/benchmarks/<YYYY-MM-DD>-NAME.json, unless told
another path (`experiments.results`).
"""
