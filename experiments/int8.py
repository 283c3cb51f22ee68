"""int8 against the float files it replaces, in one run: OpenVINO int8 / bf16 and onnxruntime int8 / fp32.

    python -m experiments.int8 [--model glnet_4g] [--batch 1 8] [--rounds 16] [--trt] [--f32] [--wait-idle 60]
        [--json F]

The files as shipped, built through the format table and loaded as an app loads them
(runtimes.load, within 3% of the bare API: experiments.artifact_speed): the portable ONNX,
its onnxruntime-targeted form and its int8 form (`ort --precision int8`), the OpenVINO IR
for the device's own precision (bf16 on a CPU with AMX), its NNCF int8 IR and the int8 IR
whose depthwise convolutions stay float (`--no-int8-depthwise`); with --f32 the IRs again,
asked for f32 compute ("openvino bf16 @f32" is the IR's f32 run), as a CPU with VNNI but
no bf16 would run them; with --trt also export.precision's TensorRT Q/DQ file, timed in
onnxruntime. Model, calibration crops and the 100 evaluation samples are experiments.targets'
(glnet_4g, weights perturbed to look trained; top-1 agreement with fp32 PyTorch). At each
batch the candidates are timed in alternating blocks and a ratio is the median over rounds
of neighbouring blocks' ratios (bench.runner.paired_ratio).

Targets: OpenVINO int8 / bf16 <= 0.75 at batch 1 and <= 0.65 at batch 8; onnxruntime int8 /
the fp32 file <= 0.6 at batch 1; both at >= 99% top-1 agreement. Results (a BenchReport of kind
"int8"): docs/benchmarks/<date>-int8.json unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import glnet
import runtimes
from artifacts.preprocess import preprocess
from bench.report import BenchReport, write_json
from bench.runner import interleave, paired_ratio
from bench.sysinfo import OtherLoad, collect_device_info
from bench.timing import make_inputs
from experiments.results import default_help, results_path
from experiments.targets import MIN_TOP1, agreement, photo_crops, quiet_moment, say
from export.formats import build
from glnet.testing import seeded_model
from runtimes.torch import TorchRunner

# (candidate, baseline, batch, limit)
TARGETS = (("openvino int8", "openvino bf16", 1, 0.75), ("openvino int8", "openvino bf16", 8, 0.65),
           ("openvino int8, depthwise float", "openvino bf16", 1, 0.75),
           ("openvino int8, depthwise float", "openvino bf16", 8, 0.65),
           ("onnxruntime int8", "onnxruntime portable", 1, 0.60))


def build_files(model: glnet.GLNet, work: Path, crops: int, trt: bool) -> dict[str, Path]:
    """The files to compare, each built through the format table (calibrated on `crops`
    crops of each sample photograph); with `trt` also TensorRT's int8 Q/DQ ONNX."""
    calib = work / "calib"
    calib.mkdir()
    for i, img in enumerate(photo_crops(seed=1, crops=crops, whole=False)):
        img.save(calib / f"{i:03d}.png")
    onnx = build("onnxruntime", model, work / "m.onnx", dynamic="batch").path
    say("exported the portable ONNX")
    files = {"onnxruntime portable": onnx,
             "onnxruntime targeted": build("onnxruntime-target", onnx, work / "m_ort.onnx").path}
    start = time.perf_counter()
    int8 = build("onnxruntime-int8", onnx, work / "m_ort_int8.onnx", calib=calib)
    files["onnxruntime int8"] = int8.path
    say(f"onnxruntime int8 in {time.perf_counter() - start:.0f} s: {int8.metadata.quantization}")
    irs: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
        ("openvino bf16", "openvino-auto", "fp32.xml", {}),
        ("openvino int8", "openvino-int8", "int8.xml", {"calib": calib}),
        ("openvino int8, depthwise float", "openvino-int8", "int8_dwfloat.xml",
         {"calib": calib, "int8_depthwise": False}))
    for name, fmt, file, options in irs:
        start = time.perf_counter()
        files[name] = build(fmt, onnx, work / file, **options).path
        say(f"converted {name} in {time.perf_counter() - start:.0f} s")
    if trt:
        from export.precision import PrecisionOptions, write_precision_onnx

        files["tensorrt q/dq in onnxruntime"] = work / "m_trt_int8.onnx"
        write_precision_onnx(onnx, files["tensorrt q/dq in onnxruntime"],
                             PrecisionOptions(precision="int8", calibration=calib))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glnet_4g")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=16, help="alternating rounds per batch (at batch > 1: half)")
    parser.add_argument("--crops", type=int, default=9, help="crops per photograph (experiments.targets' samples)")
    parser.add_argument("--trt", action="store_true", help="also time the TensorRT Q/DQ file in onnxruntime")
    parser.add_argument("--f32", action="store_true",
                        help="also time the IRs asked for f32 compute (INFERENCE_PRECISION_HINT f32), as '... @f32'")
    parser.add_argument("--json", type=Path, help=default_help("int8"))
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args()
    args.json = args.json or results_path("int8")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = seeded_model(args.model, seed=0)
    device = collect_device_info(args.threads)
    say(f"{args.model} on {device.summary()}")
    rows: dict[str, dict[str, Any]] = {}
    timings: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="glnet-int8-") as tmp:
        files = build_files(model, Path(tmp), args.crops, args.trt)
        runners = {name: runtimes.load(path, threads=args.threads) for name, path in files.items()}
        if args.f32:  # the IRs again with f32 float layers: what a CPU with VNNI but no bf16 runs
            for name in [n for n in files if n.startswith("openvino")]:
                files[f"{name} @f32"] = files[name]
                runners[f"{name} @f32"] = runtimes.load(files[name], threads=args.threads, precision="fp32")
        meta = runners["onnxruntime portable"].metadata
        assert meta is not None
        samples = [preprocess(img, meta) for img in photo_crops(seed=2, crops=args.crops)]
        say(f"top-1 agreement with PyTorch fp32 on {len(samples)} photographs and crops")
        with TorchRunner(model, threads=args.threads) as eager:
            reference = np.concatenate([eager.infer(x) for x in samples])
        for name, runner in runners.items():
            a = agreement(reference, runner, samples)
            size = sum(p.stat().st_size for p in _files(files[name]))
            rows[name] = {"precision": runner.precision, "size_bytes": size, "top1": a.top1, "flips": a.flips,
                          "flip_margin_ranks": a.flip_margin_ranks,
                          "max_abs": a.max_abs}
        for batch in args.batch:
            busy = quiet_moment(args.wait_idle)
            rounds = args.rounds if batch == 1 else max(3, args.rounds // 2)
            say(f"timing {len(runners)} files at batch {batch}, {rounds} rounds")
            blocks: dict[str, list[float]] = {}
            with OtherLoad() as during:
                stats = interleave({n: r.infer for n, r in runners.items()}, make_inputs((batch, 3, 224, 224)),
                                   rounds, blocks=blocks)
            timings[batch] = {"p50_ms": {n: s.p50 for n, s in stats.items()}, "blocks": blocks,
                              "other_cpus": {"before": busy, "during": during.cpus}}
        for r in runners.values():
            r.close()
    targets = []
    for cand, base, batch, limit in TARGETS:
        if batch not in timings:
            continue
        ratio = paired_ratio(timings[batch]["blocks"], cand, base)
        kept = rows[cand]["top1"] >= MIN_TOP1
        targets.append({"target": f"{cand} / {base} at batch {batch}", "value": ratio, "limit": limit,
                        "top1": rows[cand]["top1"], "result": "PASS" if ratio <= limit and kept else "MISS"})
    _print(rows, timings, targets, len(samples), args)
    report = BenchReport("int8", device, vars(args) | {"json": str(args.json)},
                         extra={"candidates": rows, "timings": {str(b): t for b, t in timings.items()},
                                "targets": targets, "samples": len(samples)})
    write_json(report, args.json)
    say(f"wrote {args.json}")


def baseline(name: str) -> str:
    """The float file a candidate's ratio is taken to: the bf16 IR (or, for "... @f32" runs,
    the same IR asked for f32) for OpenVINO, the portable ONNX for onnxruntime files."""
    if name.endswith("@f32"):
        return "openvino bf16 @f32"
    return "openvino bf16" if name.startswith("openvino") else "onnxruntime portable"


def _files(path: Path) -> list[Path]:
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def _print(rows: dict[str, dict[str, Any]], timings: dict[int, dict[str, Any]], targets: list[dict[str, Any]],
           samples: int, args: argparse.Namespace) -> None:
    batches = sorted(timings)
    head = " | ".join(f"b{b} p50 ms | b{b} / float" for b in batches)
    print(f"\n| file | runs as | size MB | top-1 vs PyTorch ({samples}) | flips | {head} |")
    print("|---|---|---:|---:|---:|" + "---:|---:|" * len(batches))
    for name, row in rows.items():
        base = baseline(name)
        cells = " | ".join(f"{timings[b]['p50_ms'][name]:.1f} | {paired_ratio(timings[b]['blocks'], name, base):.3f}"
                           for b in batches)
        print(f"| {name} | {row['precision']} | {row['size_bytes'] / 1e6:.1f} | {row['top1']:.0%} | {row['flips']} "
              f"| {cells} |")
    print(f"(/ float: to openvino bf16 for the IRs (to its @f32 run for @f32 runs), to the portable ONNX for "
          f"onnxruntime files; {args.model}, "
          f"{args.threads} threads, 224 x 224)")
    for t in targets:
        print(f"{t['result']:4s}  {t['target']}: {t['value']:.3f} (target <= {t['limit']}), "
              f"top-1 {t['top1']:.0%} (target >= {MIN_TOP1:.0%})")


if __name__ == "__main__":
    main()
