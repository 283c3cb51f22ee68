"""Result files: JSON (everything) and CSV (one row per measurement), both with a schema
version and the device they ran on; and the comparison of two result files.

Comparison works on the JSON as read back, not on live objects, so results from another
machine, or from an older glnet-export of the same schema major version, compare too: a
field an older file lacks (the edge figures: load time, first inference, peak memory,
file size, energy) reads as not measured.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from artifacts.atomic import atomic_outputs
from artifacts.errors import GlnetExportError
from artifacts.jsonable import jsonable

from .runner import ArtifactBench
from .sysinfo import DeviceInfo, device_from_dict

SCHEMA = "glnet-export/bench"
SCHEMA_VERSION = 1  # bumped when a field changes meaning or goes away; new fields keep it
STATS = ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")
# The edge figures of one file from a fresh process (`bench.edge`), under these keys in
# reports: load time (runtimes.load + compile), first inference, that process's peak resident
# memory and its peak before loading the file (MiB). A `bench --model` format row holds them
# (bench.suite); an artifact, and each of its CSV rows, holds them between its file size and
# the GPU memory its engine took.
EDGE_COLUMNS = ("load_seconds", "first_inference_ms", "peak_rss_mb", "baseline_rss_mb")
ARTIFACT_EDGE_COLUMNS = ("file_mb", *EDGE_COLUMNS, "gpu_memory_mb")
CSV_COLUMNS = (
    ["schema_version", "kind", "artifact", "path", "sha256", "backend", "precision", "model", "mode", "streams",
     "batch", "height", "width", "runs", "cold_ms"]
    + [f"{s}_ms" for s in STATS]
    + ["throughput_ips", "gpu_compute_mean_ms", "gpu_compute_p50_ms", "energy_mj_per_image", "avg_power_w",
       *ARTIFACT_EDGE_COLUMNS, "error", "host", "cpu_model", "cpu_cores", "threads", "memory_gib", "gpu", "gpu_driver",
       "board", "power_mode", "libraries"]
)
# Per artifact (the energy: of its first measured batch and size), as `bench compare` shows them:
# not the baseline memory, which is the runtime's, not the artifact's.
EDGE_FIGURES = (*(name for name in ARTIFACT_EDGE_COLUMNS if name != "baseline_rss_mb"), "energy_mj_per_image")


class ReportError(GlnetExportError):
    """A result file that cannot be read or compared."""


@dataclass
class BenchReport:
    kind: str  # "bench" (artifacts), "benchmark" (every format of one model), "targets", "int8"
    device: DeviceInfo
    options: dict[str, Any]
    artifacts: list[ArtifactBench] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # what a kind adds (the benchmark's format rows, ...)
    interrupted: bool = False  # Ctrl-C: the file holds what was measured until then
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION


def to_dict(report: BenchReport) -> dict[str, Any]:
    return jsonable(report)  # type: ignore[no-any-return]


def _write(path: Path, text: str) -> None:
    with atomic_outputs(Path(path)) as (temp,):
        temp.write_text(text, encoding="utf-8")


def write_json(report: BenchReport | dict[str, Any], path: Path) -> None:
    data = report if isinstance(report, dict) else to_dict(report)
    _write(path, json.dumps(data, indent=2) + "\n")


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per measurement (artifact x batch x size) of a report's JSON form."""
    device = data.get("device") or {}
    gpus = device.get("gpus") or []
    common = {
        "schema_version": data.get("schema_version"), "kind": data.get("kind"), "host": device.get("hostname"),
        "cpu_model": device.get("cpu_model"), "cpu_cores": device.get("cpu_cores"), "threads": device.get("threads"),
        "memory_gib": round(device["memory_bytes"] / 2**30, 1) if device.get("memory_bytes") else None,
        "gpu": "; ".join(g["name"] for g in gpus), "gpu_driver": "; ".join(g.get("driver", "") for g in gpus),
        "board": device.get("board_model"), "power_mode": device.get("power_mode"),
        "libraries": " ".join(f"{k}={v}" for k, v in (device.get("libraries") or {}).items()),
    }
    out = []
    for art in data.get("artifacts", []):
        for r in art.get("results", []):
            lat, gpu = r.get("latency") or {}, r.get("gpu_compute") or {}
            row = dict(common, artifact=art["name"], path=art.get("path"), sha256=art.get("sha256"),
                       backend=art.get("backend"), precision=art.get("precision"), model=art.get("model"),
                       mode=r["mode"], streams=r.get("streams"), batch=r["batch"], height=r["height"],
                       width=r["width"], runs=lat.get("runs"), cold_ms=lat.get("cold_ms"),
                       throughput_ips=r.get("throughput"), gpu_compute_mean_ms=gpu.get("mean"),
                       gpu_compute_p50_ms=gpu.get("p50"), energy_mj_per_image=r.get("energy_mj_per_image"),
                       avg_power_w=r.get("avg_power_w"), error=r.get("error", ""))
            row.update({k: art.get(k) for k in ARTIFACT_EDGE_COLUMNS})
            row.update({f"{s}_ms": lat.get(s) for s in STATS})
            out.append(row)
    return out


def write_csv(report: BenchReport | dict[str, Any], path: Path) -> None:
    data = report if isinstance(report, dict) else to_dict(report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows(data):
        writer.writerow({k: ("" if v is None else round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    _write(path, buffer.getvalue())


def load_report(path: str | Path) -> dict[str, Any]:
    """A result file's JSON, checked to be ours and of a schema version this code reads."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not a JSON result file ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(f"{path}: not a glnet-export benchmark result (write one with `glnet-export bench --json`)")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"{path}: schema version {data.get('schema_version')}, this glnet-export reads "
                          f"{SCHEMA_VERSION}")
    return data  # type: ignore[no-any-return]


@dataclass
class CompareRow:
    artifact: str
    mode: str
    batch: int
    size: str  # "224x224"
    precision: str  # "bf16" or "bf16 -> fp32" when the two runs differ
    p50_a: float | None
    p50_b: float | None
    p50_ratio: float | None  # b / a: below 1 means B is faster
    throughput_ratio: float | None  # b / a: above 1 means B is faster
    same_file: bool  # same artifact SHA-256 on both sides


@dataclass
class EdgeCompareRow:
    """An artifact's `EDGE_FIGURES` on both sides (None: not measured, or an older file)."""

    artifact: str
    a: dict[str, float | None]
    b: dict[str, float | None]


@dataclass
class Comparison:
    a: str  # the files' device summaries
    b: str
    rows: list[CompareRow]
    only_a: list[str]  # measurements with no counterpart
    only_b: list[str]
    edge: list[EdgeCompareRow] = field(default_factory=list)  # artifacts in both files with any edge figure


def _edge_rows(a: dict[str, Any], b: dict[str, Any]) -> list[EdgeCompareRow]:
    arts_b = {art["name"]: art for art in b.get("artifacts", [])}
    out = []
    for art_a in a.get("artifacts", []):
        art_b = arts_b.get(art_a["name"])
        if art_b is None:
            continue
        row = EdgeCompareRow(art_a["name"], {k: art_a.get(k) for k in EDGE_FIGURES},
                             {k: art_b.get(k) for k in EDGE_FIGURES})
        if any(v is not None for v in (*row.a.values(), *row.b.values())):
            out.append(row)
    return out


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    # Not the precision: the same file can run bf16 on one CPU and fp32 on another, and
    # that difference is what a comparison across devices is for.
    return (row["artifact"], row["mode"], row["batch"], row["height"], row["width"])


def _ratio(b: float | None, a: float | None) -> float | None:
    return b / a if a and b is not None else None


def compare(a: dict[str, Any], b: dict[str, Any]) -> Comparison:
    """Match measurements by artifact name, mode, batch and size; ratios are B / A."""
    rows_a = {_key(r): r for r in rows(a)}
    rows_b = {_key(r): r for r in rows(b)}
    out = []
    for key, ra in rows_a.items():
        rb = rows_b.get(key)
        if rb is None:
            continue
        precision = ra["precision"] if ra["precision"] == rb["precision"] else f"{ra['precision']} -> {rb['precision']}"
        out.append(CompareRow(ra["artifact"], ra["mode"], ra["batch"], f"{ra['height']}x{ra['width']}", precision,
                              ra["p50_ms"], rb["p50_ms"], _ratio(rb["p50_ms"], ra["p50_ms"]),
                              _ratio(rb["throughput_ips"], ra["throughput_ips"]),
                              bool(ra["sha256"]) and ra["sha256"] == rb["sha256"]))

    def label(k: tuple[Any, ...]) -> str:
        return f"{k[0]} {k[1]} {k[2]}x3x{k[3]}x{k[4]}"

    return Comparison(device_from_dict(a.get("device") or {}).summary(),
                      device_from_dict(b.get("device") or {}).summary(), out,
                      [label(k) for k in rows_a if k not in rows_b], [label(k) for k in rows_b if k not in rows_a],
                      _edge_rows(a, b))
