"""The bench family: `bench ARTIFACT...`, `bench --model M` and `bench compare A.json B.json`.

Typer cannot have both a variadic `bench ARTIFACT...` and a `bench compare` sub-command:
a group reads its first word as a sub-command name. So `bench` is a group whose default
sub-command is `run`: when the first word is not a sub-command name ("compare", "run",
"formats") or a help flag, "run" is put in front of it, or "formats" when `--model` is
among the words (the all-format table). `bench a.onnx` is `bench run a.onnx`, `bench
--model M` is `bench formats --model M`; each sub-command keeps its own options and help,
and only an artifact literally named "compare" needs a path prefix (`bench ./compare`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from .bench_formats_cmd import bench_formats
from .common import checked_output, err, fail, handle_errors, mib, out, warn_about_the_machine, write_json

MODEL_FLAGS = ("--model", "-m")


class DefaultToRun(TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            words = args[:args.index("--")] if "--" in args else args
            by_model = any(w in MODEL_FLAGS or w.startswith("--model=") for w in words)
            args = ["formats" if by_model else "run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=DefaultToRun, no_args_is_help=True, add_completion=False,
                  help="Latency and throughput: `bench ARTIFACT...` (files you have), `bench --model M` (every "
                       "format of a model: exported, verified, timed, one table), `bench compare A.json B.json`.",
                  context_settings={"help_option_names": ["-h", "--help"]})


class LazyProgress:
    """A progress bar on stderr that appears only once a run has taken a few seconds."""

    DELAY_S = 2.0

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None
        self._label = ""

    def __call__(self, label: str, fraction: float) -> None:
        if self._bar is None:
            if time.perf_counter() - self._start < self.DELAY_S:
                return
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), console=err, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=1.0)
        if label != self._label:
            self._bar.reset(self._task, description=label, total=1.0)
            self._label = label
        self._bar.update(self._task, completed=min(fraction, 1.0))

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _ints(text: str, what: str) -> tuple[int, ...]:
    from artifacts.errors import OptionError

    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise OptionError(f"{what} {text!r} is not a comma-separated list of numbers (e.g. 1,8)") from None


def _sizes(text: str | None) -> tuple[tuple[int, int], ...]:
    from export.onnx import parse_input_size

    return tuple(parse_input_size(p) for p in text.split(",") if p.strip()) if text else ()


def _ms(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def results_table(benches: list[Any], title: str) -> Table:
    gpu = any(r.gpu_compute for b in benches for r in b.results)
    streams = any(r.mode == "throughput" for b in benches for r in b.results)
    energy = any(r.energy_mj_per_image is not None for b in benches for r in b.results)
    table = Table(title=title, title_justify="left")
    columns = ["artifact", "precision", "batch", "size", "cold", "mean", "std", "min", "p50", "p90", "p95", "p99",
               "max", "img/s"] + (["GPU p50"] if gpu else []) + (["streams"] if streams else []) + (
               ["mJ/img"] if energy else [])
    for name in columns:
        table.add_column(name, justify="left" if name in ("artifact", "precision") else "right", no_wrap=True)
    errors = []
    for b in benches:
        for r in b.results:
            if r.latency is None:
                errors.append(f"{b.name} {r.batch}x3x{r.height}x{r.width}: {r.error}")
                continue
            s = r.latency
            row = [b.name, b.precision, str(r.batch), f"{r.height}x{r.width}", _ms(s.cold_ms, ".1f"), _ms(s.mean),
                   _ms(s.std), _ms(s.min), _ms(s.p50), _ms(s.p90), _ms(s.p95), _ms(s.p99), _ms(s.max),
                   _ms(r.throughput, ".1f")]
            row += [_ms(r.gpu_compute.p50 if r.gpu_compute else None)] if gpu else []
            row += [str(r.streams)] if streams else []
            row += [_ms(r.energy_mj_per_image, ".1f")] if energy else []
            table.add_row(*row)
    table.caption = ("latency in ms over warm runs (cold: the first run, after any per-shape compile); "
                     "img/s over the measured wall time") + (
        "".join(f"\n[red]not measured[/] {e}" for e in errors))
    return table


def edge_table(benches: list[Any], title: str) -> Table:
    """Per artifact: file size, load time, first inference, peak memory, GPU memory, energy."""
    gpu = any(b.gpu_memory_mb is not None for b in benches)
    table = Table(title=title, title_justify="left")
    columns = ["artifact", "shape", "file", "load s", "first ms", "peak RSS", "runtime alone"] + (
        ["GPU memory"] if gpu else []) + ["mJ/img", "avg W"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("artifact", "shape") else "right", no_wrap=True)
    notes: dict[str, str] = {}  # reason -> its number in the caption
    for b in benches:
        def cell(value: str, key: str, b: Any = b) -> str:
            reason = b.not_measured.get(key)
            if value != "-" or not reason:
                return value
            notes.setdefault(reason, str(len(notes) + 1))
            return f"n/a ({notes[reason]})"

        row = [b.name, "x".join(map(str, b.edge_shape)) or "-", mib(b.file_mb),
               cell(_ms(b.load_seconds, ".2f"), "load_seconds"), cell(_ms(b.first_inference_ms, ".1f"),
                                                                      "first_inference_ms"),
               cell(mib(b.peak_rss_mb), "peak_rss_mb"), mib(b.baseline_rss_mb)]
        row += [cell(mib(b.gpu_memory_mb), "gpu_memory_mb")] if gpu else []
        row += [cell(_ms(b.energy_mj_per_image, ".1f"), "energy_mj_per_image"), _ms(b.avg_power_w, ".1f")]
        table.add_row(*row)
    table.caption = ("load: runtimes.load + compiling the shape, first: the first inference after it, peak RSS: "
                     "the peak resident memory, all from a fresh process per artifact; runtime alone: that process "
                     "before loading the file (the model costs the difference); energy over the timed runs"
                     + "".join(f"\n({n}) {escape(reason)}" for reason, n in notes.items()))
    return table


def layers_table(bench: Any, top: int) -> Table:
    prof = bench.layers
    table = Table(title=f"Hottest operator types and layers: {bench.name} ({prof.backend}, "
                        f"{'x'.join(map(str, prof.shape))}, {prof.total_ms:.2f} ms in layers per run)",
                  title_justify="left")
    for name, justify in (("op type", "left"), ("layers", "right"), ("ms", "right"), ("share", "right"),
                          ("hottest layers", "left"), ("ms ", "right"), ("share ", "right"), ("kernel", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "hottest layers")  # type: ignore[arg-type]
    for i in range(min(top, max(len(prof.by_type), len(prof.layers)))):
        t = prof.by_type[i] if i < len(prof.by_type) else None
        lay = prof.layers[i] if i < len(prof.layers) else None
        table.add_row(*(t and (t.op_type, str(t.layers), f"{t.ms:.3f}", f"{t.share:.1%}") or ("",) * 4),
                      *(lay and (f"{lay.name} ({lay.op_type})", f"{lay.ms:.3f}", f"{lay.share:.1%}", lay.detail)
                        or ("",) * 4))
    if prof.notes:
        table.caption = "; ".join(prof.notes)
    return table


@app.command("run")
@handle_errors
def run(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifacts to time (.onnx, .xml, .engine).")],
    batch: Annotated[str, typer.Option(help="Batch sizes, e.g. 1,8.")] = "1",
    input_size: Annotated[str | None, typer.Option("--input-size", help="Sizes for dynamic artifacts, e.g. "
                                                   "224,320,448 or 288x352 (default: the export size).")] = None,
    warmup: Annotated[str, typer.Option(help="Warm-up: iterations (10) or time (2s).")] = "3",
    iters: Annotated[int | None, typer.Option(help="Timed iterations (instead of --duration).")] = None,
    duration: Annotated[str, typer.Option(help="Timed duration per batch and size (at least 5 runs).")] = "5s",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: the runtime's).")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda[:N] (TensorRT) | OpenVINO device (GPU, NPU).")] = "cpu",
    precision: Annotated[str | None, typer.Option(help="Ask OpenVINO for fp32|bf16|fp16 (default: its own).")] = None,
    mode: Annotated[str, typer.Option(help="latency (one request at a time) | throughput (several).")] = "latency",
    streams: Annotated[int | None, typer.Option(help="Throughput mode: requests in flight (default: auto).")] = None,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="Profile the hottest operator types and layers.")]
    = False,
    edge: Annotated[bool, typer.Option("--edge/--no-edge", help="Also load each artifact in a fresh process: load "
                                       "time, first inference, peak memory (a second or more per artifact).")]
    = True,
    top: Annotated[int, typer.Option(help="Rows of the per-layer table.")] = 15,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the results as JSON ('-': stdout).")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", callback=checked_output,
                                                  help="Write one CSV row per measurement.")] = None,
    plot_path: Annotated[Path | None, typer.Option("--plot", callback=checked_output,
                                                   help="Plot latency against input size (PNG).")] = None,
) -> None:
    """Time ARTIFACTs at every batch x input size: mean, std, min, p50-p99, max, throughput; cold run apart."""
    from artifacts.errors import GlnetExportError, one_line
    from bench.report import BenchReport, to_dict, write_csv
    from bench.runner import BenchOptions, Budget, bench_artifact
    from bench.sysinfo import collect_device_info

    # --duration is a time even without its unit ("10" = 10 s); --iters wins when both are given.
    seconds = Budget.parse(duration if duration.strip().lower().endswith("s") else f"{duration}s").seconds
    measure = Budget(count=iters) if iters is not None else Budget(seconds=seconds, minimum=5)
    options = BenchOptions(batches=_ints(batch, "--batch"), sizes=_sizes(input_size),
                           warmup=Budget.parse(warmup, minimum=1), measure=measure, threads=threads, device=device,
                           precision=precision, mode=mode, streams=streams, per_layer=per_layer, edge=edge)
    options.validate()
    if top < 1:
        raise fail(f"--top must be >= 1, not {top}")
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise fail(f"--plot {plot_path}: the plot is a PNG; name the file .png")
    to_stdout = json_path is not None and str(json_path) == "-"
    device_info = collect_device_info(threads)
    warn_about_the_machine(device_info, " (and multi-threaded PyTorch or CPU runtimes much slower than on an idle "
                                        "machine)")
    benches, failed, progress = [], [], LazyProgress()
    try:
        for path in artifacts:
            try:
                bench = bench_artifact(path, options, progress)
            except GlnetExportError as exc:
                message = one_line(exc)  # most messages name the file already
                message = message if message.startswith(str(path)) else f"{path}: {message}"
                failed.append(message)
                err.print(f"[bold red]Error:[/] {escape(message)}", soft_wrap=True)
                continue
            benches.append(bench)
            if bench.interrupted:
                break
    finally:
        progress.stop()
    interrupted = any(b.interrupted for b in benches)
    report = BenchReport("bench", device_info, _options_dict(options, artifacts), benches, interrupted=interrupted)
    write_json(to_dict(report), json_path)
    if csv_path is not None:
        write_csv(report, csv_path)
    if not to_stdout:
        out.print(results_table(benches, f"{options.mode} on {device_info.summary()}"))
        if benches:
            out.print(edge_table(benches, "What a device must hold: per artifact"))
        for b in benches:
            if b.layers is not None:
                out.print(layers_table(b, top))
            elif b.layers_error:
                err.print(f"[yellow]no per-layer profile for {b.name}:[/] {b.layers_error}")
    if plot_path is not None and benches:
        from bench.plot import plot_latency

        plot_latency(benches, plot_path, device_info.summary())
        if not to_stdout:
            out.print(f"plot -> {plot_path}")
    if interrupted:
        raise fail("interrupted: the table (and any files) hold what was measured until then", 130)
    if failed:
        raise typer.Exit(1)
    unmeasured = sum(1 for b in benches for r in b.results if r.latency is None)
    if unmeasured:  # a fixed axis, a shape outside a TensorRT profile: what ran is kept, the exit code says
        total = sum(len(b.results) for b in benches)
        raise fail(f"{unmeasured} of {total} batch x size combinations could not run (see 'not measured')")


def _options_dict(options: Any, artifacts: list[Path]) -> dict[str, Any]:
    from bench.report import jsonable

    data: dict[str, Any] = jsonable(options)
    data["artifacts"] = [str(a) for a in artifacts]
    return data


@app.command("compare")
@handle_errors
def compare(
    a: Annotated[Path, typer.Argument(help="A result file (bench or benchmark --json).")],
    b: Annotated[Path, typer.Argument(help="Another result file; ratios are B / A.")],
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the comparison as JSON ('-': stdout).")]
    = None,
) -> None:
    """Put two result files side by side (e.g. two devices): p50 latency and throughput ratios B / A."""
    from bench.report import compare as compare_reports
    from bench.report import load_report

    result = compare_reports(load_report(a), load_report(b))
    write_json(result, json_path)
    if json_path is not None and str(json_path) == "-":
        return
    table = Table(title=f"A: {a} ({result.a})\nB: {b} ({result.b})", title_justify="left")
    for name in ("artifact", "mode", "batch", "size", "precision", "p50 A", "p50 B", "B/A latency", "B/A img/s",
                 "same file"):
        table.add_column(name, justify="left" if name in ("artifact", "mode", "precision") else "right")
    for r in result.rows:
        table.add_row(r.artifact, r.mode, str(r.batch), r.size, r.precision, _ms(r.p50_a), _ms(r.p50_b),
                      _ms(r.p50_ratio, ".3f"), _ms(r.throughput_ratio, ".3f"), "yes" if r.same_file else "no")
    unmatched = len(result.only_a) + len(result.only_b)
    table.caption = "B/A latency below 1: B is faster" + (f"; {unmatched} measurement(s) in only one file"
                                                          if unmatched else "")
    out.print(table)
    if result.edge:
        out.print(_edge_compare_table(result.edge))
    if not result.rows:
        raise fail("the two files have no measurement in common (same artifact name, mode, batch and size)")


def _edge_compare_table(rows: list[Any]) -> Table:
    table = Table(title="Per artifact, A -> B (-: not measured, or a file from before these were recorded)",
                  title_justify="left")
    names = {"file_mb": ("file MiB", ".1f"), "load_seconds": ("load s", ".2f"), "first_inference_ms":
             ("first ms", ".1f"), "peak_rss_mb": ("peak RSS MiB", ".0f"), "gpu_memory_mb": ("GPU MiB", ".0f"),
             "energy_mj_per_image": ("mJ/img", ".1f")}
    shown = [k for k in names if any(r.a.get(k) is not None or r.b.get(k) is not None for r in rows)]
    table.add_column("artifact", no_wrap=True)
    for key in shown:
        table.add_column(names[key][0], justify="right", no_wrap=True)
    for r in rows:
        table.add_row(r.artifact, *(f"{_ms(r.a.get(k), names[k][1])} -> {_ms(r.b.get(k), names[k][1])}"
                                    for k in shown))
    return table


# `bench --model M`: the all-format table, in its own module (its table and options are its own).
app.command("formats", help="Every format of --model M: exported, verified against PyTorch, timed; one table. "
            "Also reached as `bench --model M`.")(bench_formats)
