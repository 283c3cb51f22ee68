"""What each int8 setting gives on the trained digits model: accuracy, drop from fp32 and speed.

    python -m experiments.int8_budget [--max-drop 0.01] [--rounds 20] [--cache DIR] [--json F]

The model is tests/helpers_trained.py's glnet_tiny trained on scikit-learn's digits (32 x 32,
weights kept under --cache, by default the tests' own pytest cache, so a trained model is
reused), exported to a dynamic-batch ONNX. Its 200 held-out digits are split into two
class-balanced halves: A, which `--max-drop` chooses on, and B, which nothing was chosen
on; accuracies are given on both, the drop's honest figure is B's.

Four int8 files, all built through the format table: onnxruntime int8 (`ort --precision
int8`) without and with `--max-drop`, OpenVINO int8 (`openvino --precision int8`) without
and with it; each calibrated two ways: on the 100 calibration digits (as a user should),
and on the same digits at a tenth of their brightness (a calibration set unlike what the
model sees, which clips the stem's input range: the case a budget exists for).

Accuracy: top-1 with its Wilson interval and the paired change from fp32 (the ONNX in
onnxruntime) with Newcombe's interval (artifacts.scoring); OpenVINO IRs run with f32 float
layers, as their budget is measured. Speed: batch 1, each runtime's files timed in
alternating blocks (bench.runner.interleave), the ratio the median over rounds of
neighbouring blocks: onnxruntime files against the fp32 ONNX, IRs against the fp32 IR,
both run as an app runs them (IRs in the device's own precision, bf16 on a CPU with it).
Results: docs/benchmarks/<date>-int8-budget.json unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

import runtimes
from artifacts.jsonable import jsonable
from artifacts.labelled import LabelledSet, balanced_sample, read_labelled
from artifacts.labels import labels_for
from artifacts.scoring import PairedChange, Proportion, paired_change
from bench.report import write_json
from bench.runner import interleave, paired_ratio
from bench.sysinfo import collect_device_info
from experiments.results import ROOT, default_help, results_path
from export.formats import build
from export.int8_budget import AccuracyBudget, BudgetNotMetError
from glnet.checkpoint import checkpoint_sha256
from verification.accuracy import AccuracyOptions, score_runners

CALIBRATIONS = {"digits": 1.0, "dim digits (x0.1)": 0.1}  # brightness of the calibration images
REFERENCE = "fp32 onnx"  # what every change is measured from


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _helpers() -> ModuleType:
    """tests/helpers_trained.py, loaded by path: the digits training is the tests' own."""
    spec = importlib.util.spec_from_file_location("helpers_trained", ROOT / "tests" / "helpers_trained.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_halves(images: np.ndarray, labels: np.ndarray, root: Path) -> tuple[Path, dict[str, Path]]:
    """The held-out digits in class folders, and a labels file per half (A: chosen on, B: held out)."""
    folder = root / "eval"
    rows = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / str(int(label)) / f"digit_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "RGB").save(path)
        rows.append(f"{path.relative_to(folder)},{int(label)}")
    in_a = np.zeros(len(labels), dtype=bool)
    in_a[balanced_sample(labels, len(labels) // 2, seed=7)] = True
    files = {}
    for half, keep in (("A", in_a), ("B", ~in_a)):
        files[half] = root / f"{half}.csv"
        files[half].write_text("path,label\n" + "\n".join(r for r, k in zip(rows, keep, strict=True) if k) + "\n")
    return folder, files


def write_calibration(images: np.ndarray, root: Path) -> dict[str, Path]:
    folders = {}
    for name, scale in CALIBRATIONS.items():
        folders[name] = root / f"calib_{scale}"
        folders[name].mkdir()
        for i, image in enumerate(images):
            Image.fromarray((image * scale).astype(np.uint8), "RGB").save(folders[name] / f"c_{i:03d}.png")
    return folders


def build_files(onnx: Path, calib: dict[str, Path], data: Path, a_csv: Path, max_drop: float,
                work: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every int8 file (name -> path) and what each build said (seconds, the budget record)."""
    files = {REFERENCE: onnx, "fp32 ir": build("openvino-auto", onnx, work / "fp32.xml").path}
    builds: dict[str, Any] = {}
    budget = AccuracyBudget(max_drop, data, a_csv)
    for scenario, folder in calib.items():
        for fmt, runtime in (("onnxruntime-int8", "ort"), ("openvino-int8", "ov")):
            for with_budget in (False, True):
                name = f"{runtime} int8{' --max-drop' if with_budget else ''} | {scenario}"
                suffix = ".xml" if runtime == "ov" else ".onnx"
                start = time.perf_counter()
                try:
                    result = build(fmt, onnx, work / f"{len(builds)}{suffix}", calib=folder,
                                   budget=budget if with_budget else None)
                except BudgetNotMetError as exc:
                    builds[name] = {"error": str(exc), "seconds": time.perf_counter() - start}
                    say(f"{name}: {exc}")
                    continue
                q = result.metadata.quantization
                builds[name] = {"seconds": time.perf_counter() - start, "quantized_ops": q.quantized_ops,
                                "budget": q.budget}
                files[name] = result.path
                say(f"{name}: built in {builds[name]['seconds']:.0f} s" +
                    (f"; {q.budget.describe()}" if q.budget else ""))
    return files, builds


def score(files: dict[str, Path], halves: dict[str, LabelledSet]) -> dict[str, dict[str, Any]]:
    """Per file and half: top-1 (Wilson) and the paired change from the fp32 ONNX (Newcombe),
    scored as `glnet-export accuracy` scores (verification.accuracy.score_runners). Every file
    is the same model, so all take the fp32 ONNX's preprocessing."""
    table: dict[str, dict[str, Any]] = {name: {} for name in files}
    with contextlib.ExitStack() as stack:
        runners = [(name, stack.enter_context(runtimes.load(path, precision="fp32" if path.suffix == ".xml" else None)))
                   for name, path in files.items()]
        meta = dict(runners)[REFERENCE].metadata
        assert meta is not None
        for half, labelled in halves.items():
            for row in score_runners(runners, labelled, meta, REFERENCE, AccuracyOptions(batch=50)):
                change = row.change_from_pytorch if row.name != REFERENCE else _unchanged(row.top1)
                table[row.name][half] = {"top1": row.top1, "change_from_fp32": change}
    return table


def _unchanged(top1: Proportion) -> PairedChange:
    """The reference's change from itself, which score_runners leaves out: paired_change of a
    file's hits with themselves, which depends on their count alone."""
    hits = np.arange(top1.n) < top1.hits
    return paired_change(hits, hits)


def speed(files: dict[str, Path], rounds: int) -> dict[str, float]:
    """Batch-1 time of each file over its runtime's fp32 file (bench.runner.interleave)."""
    x = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(4)]
    ratios = {}
    for suffix, baseline in ((".onnx", REFERENCE), (".xml", "fp32 ir")):
        group = {name: path for name, path in files.items() if path.suffix == suffix}
        runners = {name: runtimes.load(path) for name, path in group.items()}
        try:
            blocks: dict[str, list[float]] = {}
            interleave({name: r.infer for name, r in runners.items()}, x, rounds=rounds, per_round=20,
                       blocks=blocks)
            ratios.update({name: paired_ratio(blocks, name, baseline) for name in group})
        finally:
            for runner in runners.values():
                runner.close()
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--cache", type=Path, default=ROOT / ".pytest_cache" / "d" / "glnet-digits",
                        help="where the trained digits weights are kept (default: the tests' cache)")
    parser.add_argument("--json", type=Path, help=default_help("int8-budget"))
    args = parser.parse_args(argv)
    args.json = args.json or results_path("int8-budget")
    digits = _helpers().load_or_train(args.cache)
    say(f"digits model: {digits.eval_accuracy:.1%} on its 200 held-out digits (PyTorch)")
    with tempfile.TemporaryDirectory(prefix="int8-budget-") as tmp:
        work = Path(tmp)
        onnx = build("onnxruntime", digits.model, work / "digits.onnx", checkpoint_sha256=checkpoint_sha256(
            digits.checkpoint), input_size=(32, 32), dynamic="batch").path
        data, csvs = write_halves(digits.eval_images, digits.eval_labels, work)
        calib = write_calibration(digits.calib_images, work)
        files, builds = build_files(onnx, calib, data, csvs["A"], args.max_drop, work)
        names = labels_for("", 10)
        halves = {half: read_labelled(data, csv, names) for half, csv in csvs.items()}
        say("scoring every file on both halves")
        table = score(files, halves)
        say("timing")
        ratios = speed(files, args.rounds)
    rows = []
    for name in files:
        row = {"file": name, "speed_vs_fp32": ratios.get(name), **builds.get(name, {}), **table[name]}
        rows.append(row)
        a, b = table[name]["A"], table[name]["B"]
        print(f"{name:42s} A {a['top1'].value:6.1%} ({a['change_from_fp32'].change * 100:+5.1f} pp)  "
              f"B {b['top1'].value:6.1%} ({b['change_from_fp32'].change * 100:+5.1f} pp, "
              f"{b['change_from_fp32'].low * 100:+.1f} to {b['change_from_fp32'].high * 100:+.1f})  "
              f"time x{ratios.get(name, float('nan')):.2f}")
    failed = [{"file": name, **info} for name, info in builds.items() if "error" in info]
    report = {"experiment": "int8-budget", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python -m experiments.int8_budget " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": collect_device_info(), "max_drop": args.max_drop, "model": "glnet_tiny on digits, 32 x 32",
              "halves": {h: {"images": len(s), "source": s.source} for h, s in halves.items()},
              "rows": rows, "not_met": failed}
    write_json(jsonable(report), args.json)
    say(f"wrote {args.json}")


if __name__ == "__main__":
    main()
