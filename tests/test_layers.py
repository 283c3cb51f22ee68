"""The layers import downward only, read from the source (every import, also inside functions).

glnet (models) -> glnet_export's artifact types (metadata, manifest, atomic writes, ...) ->
runtimes (load and run files as they are) -> export (writes files, verifies them by running
them) -> bench, serving -> the CLI. Above all: runtimes never imports export, so no graph
rewrite can sneak back into loading a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# For each layer, the top-level names it must not import (the layers above it).
FORBIDDEN = {
    "glnet": {"glnet_export", "runtimes", "export", "bench", "serving"},
    "glnet_export": {"runtimes", "export", "bench", "serving", "glnet_export.cli"},  # the artifact types
    "runtimes": {"export", "bench", "serving", "glnet_export.cli"},
    "export": {"bench", "serving", "glnet_export.cli"},
    "bench": {"serving", "glnet_export.cli"},
    "serving": {"bench", "glnet_export.cli"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[:2] == ("glnet_export", "cli"):
        return "cli"
    return rel.parts[0]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of everything `path` imports, relative imports resolved."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _violations(layer: str) -> list[str]:
    found = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        here = _layer(path)
        if here not in FORBIDDEN:
            continue
        for name in _imports(path):
            for banned in FORBIDDEN[here]:
                if name == banned or name.startswith(banned + "."):
                    found.append(f"{path.relative_to(ROOT)} imports {name}")
    return sorted(set(found))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downward(layer: str) -> None:
    assert _violations(layer) == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    # The rule must be able to fail: a relative import that climbs into export is caught.
    probe = ROOT / "runtimes" / "_layer_probe.py"
    probe.write_text("def f():\n    from export.passes import apply_onnx_target\n", encoding="utf-8")
    try:
        assert _violations("runtimes") == ["runtimes/_layer_probe.py imports export.passes",
                                           "runtimes/_layer_probe.py imports export.passes.apply_onnx_target"]
    finally:
        probe.unlink()


def test_runtimes_holds_no_graph_rewrite() -> None:
    # Loading runs the file as written: nothing under runtimes/ can build or edit a graph,
    # since neither onnx (graph protos) nor OpenVINO's op sets (graph nodes) are imported.
    editors = sorted(f"{p.relative_to(ROOT)} imports {name}" for p in (ROOT / "runtimes").rglob("*.py")
                     for name in _imports(p)
                     if name == "onnx" or name.startswith(("onnx.", "openvino.opset", "openvino.runtime.opset")))
    assert editors == []
