"""Three performance targets for the shipped files, measured as ratios in one run (shared machines are noisy).

    python -m experiments.targets [--model glnet_4g] [--threads 2] [--rounds 10] [--json F]

glnet_4g (weights perturbed to look trained, `glnet.testing`), 1 x 3 x 224 x 224, every
candidate timed in alternating blocks with PyTorch eager (`bench.runner.interleave`); a
ratio is the median over rounds of neighbouring blocks' ratios, which cancels slow changes
in the load of a shared machine (p50 and min ratios are printed beside it):
1. best fp32 artifact p50 / eager p50 <= 0.40;
2. best artifact at any precision keeping >= 99% top-1 agreement with fp32 PyTorch on real
   photographs (the sample photographs and crops of them) / eager p50 <= 0.30;
3. p50 at 448 x 448 / p50 at 224 x 224 <= 4.6 for the fastest fp32 dynamic-shape artifact.
Prints a markdown table for the README. int8 is calibrated on other crops of the same photographs.
Every file is built through the format table. Results (a BenchReport of kind "targets"):
docs/benchmarks/<date>-targets.json unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import glnet
import runtimes
from artifacts.metadata import ArtifactMetadata
from artifacts.photos import sample_photo_paths
from artifacts.preprocess import preprocess
from bench.report import BenchReport, jsonable, write_json
from bench.runner import ArtifactBench, BenchResult, artifact_files, artifact_sha256, interleave, paired_ratio
from bench.sysinfo import OtherLoad, busy_cpus, collect_device_info
from bench.timing import make_inputs
from experiments.results import default_help, results_path
from export.formats import build, get_format
from glnet.testing import perturb_weights_
from runtimes.base import Runner
from runtimes.torch import TorchRunner
from verification.metrics import top1_leads

LIMITS = {"fp32_vs_eager": 0.40, "any_precision_vs_eager": 0.30, "448_vs_224": 4.6}
MIN_TOP1 = 0.99


def photo_crops(seed: int, crops: int, whole: bool = True) -> list[Image.Image]:
    """Each sample photograph (whole, unless not `whole`) and `crops` random crops of 50-90% of its sides."""
    rng = np.random.default_rng(seed)
    out = []
    for path in sample_photo_paths():
        img = Image.open(path).convert("RGB")
        if whole:
            out.append(img)
        for _ in range(crops):
            fh, fw = rng.uniform(0.5, 0.9, 2)
            h, w = int(img.height * fh), int(img.width * fw)
            top, left = int(rng.integers(0, img.height - h + 1)), int(rng.integers(0, img.width - w + 1))
            out.append(img.crop((left, top, left + w, top + h)))
    return out


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_files(model: glnet.GLNet, work: Path, crops: int) -> dict[str, Path]:
    """The files as shipped: a dynamic-batch ONNX at 224 (portable, onnxruntime-targeted and
    onnxruntime int8) and its IRs (fp32 built for f32 compute, fp32 for the device's choice, int8), a
    dynamic-shape ONNX (onnxruntime-targeted) and its IR built for f32."""
    paths = {"onnx": work / "batch.onnx", "onnx_shape": work / "shape.onnx"}
    for key, dynamic in (("onnx", "batch"), ("onnx_shape", "shape")):
        start = time.perf_counter()
        build("onnxruntime", model, paths[key], dynamic=dynamic)
        say(f"exported {paths[key].name} (dynamic {dynamic}) in {time.perf_counter() - start:.0f} s")
    paths["ort"] = build("onnxruntime-target", paths["onnx"], work / "batch_ort.onnx").path
    paths["ort_shape"] = build("onnxruntime-target", paths["onnx_shape"], work / "shape_ort.onnx").path
    calib = work / "calib"
    calib.mkdir()
    for i, img in enumerate(photo_crops(seed=1, crops=crops, whole=False)):
        img.save(calib / f"{i:03d}.png")
    start = time.perf_counter()
    paths["ort_int8"] = build("onnxruntime-int8", paths["onnx"], work / "batch_ort_int8.onnx", calib=calib).path
    say(f"quantized {paths['ort_int8'].name} (onnxruntime int8) in {time.perf_counter() - start:.0f} s")
    irs = (("ov_f32", "onnx", "openvino-fp32"), ("ov_fp32", "onnx", "openvino-auto"),
           ("ov_shape", "onnx_shape", "openvino-fp32"), ("ov_int8", "onnx", "openvino-int8"))
    for key, src, fmt in irs:
        start = time.perf_counter()
        paths[key] = build(fmt, paths[src], work / f"{key}.xml",
                           calib=calib if get_format(fmt).calibrated else None).path
        say(f"converted {paths[key].name} ({fmt}) in {time.perf_counter() - start:.0f} s")
    return paths


def quiet_moment(limit_s: float, busy_max: float = 0.25) -> float | None:
    """Wait (up to `limit_s`) until other processes leave the CPUs idle; returns the busy CPUs seen last."""
    deadline = time.monotonic() + limit_s
    busy = busy_cpus(2.0)
    while busy is not None and busy > busy_max and time.monotonic() < deadline:
        say(f"{busy:.1f} CPUs busy with other work: waiting for a quiet moment")
        time.sleep(10)
        busy = busy_cpus(2.0)
    if busy is not None and busy > busy_max:
        say(f"WARNING: {busy:.1f} CPUs busy with other work; timings (PyTorch eager above all) are unreliable")
    return busy


@dataclass
class Agreement:
    """How a candidate's predictions compare with PyTorch fp32 on the evaluation photographs."""

    top1: float  # share of samples with the same top-1 class
    max_abs: float  # largest logit difference
    flips: int  # samples whose top-1 class changed
    # For each flipped sample, the rank of its fp32 top-1/top-2 logit margin among all
    # samples' margins (0 = the narrowest): flips at the narrowest margins are near-ties
    # of the random-weight model, not a broken artifact.
    flip_margin_ranks: list[int] = field(default_factory=list)


def agreement(reference: np.ndarray, runner: Runner, samples: list[np.ndarray]) -> Agreement:
    out = np.concatenate([runner.infer(x) for x in samples])
    same = out.argmax(1) == reference.argmax(1)
    rank = np.argsort(np.argsort(top1_leads(reference)))
    return Agreement(float(same.mean()), float(np.abs(out - reference).max()), int((~same).sum()),
                     sorted(int(r) for r in rank[~same]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glnet_4g")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (each: 1 settling + 3 timed runs)")
    parser.add_argument("--crops", type=int, default=9, help="random crops per photograph, for calibration (int8) and "
                        "evaluation (other crops, plus the whole photographs: 100 samples from 10 photographs, "
                        "the fewest on which 99%% agreement allows one flip)")
    parser.add_argument("--json", type=Path, help=default_help("targets"))
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each timing stage, wait up to this long for other processes to leave the CPUs")
    args = parser.parse_args()
    args.json = args.json or results_path("targets")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = glnet.create_model(args.model)
    perturb_weights_(model)
    device = collect_device_info(args.threads)
    say(f"{args.model} on {device.summary()}")
    with tempfile.TemporaryDirectory(prefix="glnet-targets-") as tmp:
        paths = build_files(model, Path(tmp), args.crops)
        runners: dict[str, tuple[Runner, Path | None]] = {
            "pytorch eager": (TorchRunner(model, threads=args.threads), None),
            "onnxruntime portable": (runtimes.load(paths["onnx"], threads=args.threads), paths["onnx"]),
            "onnxruntime targeted": (runtimes.load(paths["ort"], threads=args.threads), paths["ort"]),
            "onnxruntime targeted (dynamic HxW)": (runtimes.load(paths["ort_shape"], threads=args.threads),
                                                   paths["ort_shape"]),
            "onnxruntime int8": (runtimes.load(paths["ort_int8"], threads=args.threads), paths["ort_int8"]),
            "openvino f32": (runtimes.load(paths["ov_f32"], threads=args.threads), paths["ov_f32"]),
            "openvino default": (runtimes.load(paths["ov_fp32"], threads=args.threads), paths["ov_fp32"]),
            # The same IRs compiled once with their dynamic batch, as the runner did before it
            # compiled per shape: what static shapes are worth.
            "openvino f32, dynamic compile": (runtimes.load(paths["ov_f32"], threads=args.threads,
                                                            static_shapes=False), paths["ov_f32"]),
            "openvino default, dynamic compile": (runtimes.load(paths["ov_fp32"], threads=args.threads,
                                                                static_shapes=False), paths["ov_fp32"]),
            "openvino int8": (runtimes.load(paths["ov_int8"], threads=args.threads), paths["ov_int8"]),
            "openvino f32 (dynamic HxW)": (runtimes.load(paths["ov_shape"], threads=args.threads), paths["ov_shape"]),
        }
        meta = runners["onnxruntime portable"][0].metadata or ArtifactMetadata(model=args.model, num_classes=1000)
        samples = [preprocess(img, meta) for img in photo_crops(seed=2, crops=args.crops)]
        say(f"top-1 agreement with PyTorch fp32 on {len(samples)} photographs and crops")
        reference = np.concatenate([runners["pytorch eager"][0].infer(x) for x in samples])
        quality = {name: agreement(reference, r, samples) for name, (r, _) in runners.items()}

        busy = {"224, before": quiet_moment(args.wait_idle)}
        say(f"timing {len(runners)} candidates at 224, {args.rounds} rounds")
        blocks: dict[str, list[float]] = {}
        with OtherLoad() as during_224:
            stats = interleave({n: r.infer for n, (r, _) in runners.items()}, make_inputs((1, 3, 224, 224)),
                               args.rounds, blocks=blocks)
        dynamic = ["pytorch eager", "onnxruntime targeted (dynamic HxW)", "openvino f32 (dynamic HxW)"]
        busy["448, before"] = quiet_moment(args.wait_idle)
        say(f"timing {len(dynamic)} candidates at 224 and 448, {args.rounds} rounds")
        big = {f"{n} @{s}": runners[n][0].infer for n in dynamic for s in (224, 448)}
        feeds = {f"{n} @{s}": make_inputs((1, 3, s, s)) for n in dynamic for s in (224, 448)}
        scale_blocks: dict[str, list[float]] = {}
        with OtherLoad() as during_448:
            scaling = interleave(big, feeds, args.rounds, blocks=scale_blocks)
        busy |= {"224, during": during_224.cpus, "448, during": during_448.cpus}
        artifacts = [_artifact(n, r, p, stats[n]) for n, (r, p) in runners.items()]
        for r, _ in runners.values():
            r.close()

    eager = stats["pytorch eager"]
    rows: list[dict[str, Any]] = [
        {"candidate": n, "precision": r.precision, "p50_ms": stats[n].p50, "min_ms": stats[n].min,
         "vs_eager": paired_ratio(blocks, n, "pytorch eager"), "vs_eager_p50": stats[n].p50 / eager.p50,
         "vs_eager_min": stats[n].min / eager.min, "top1": quality[n].top1, "max_abs": quality[n].max_abs,
         "flips": quality[n].flips, "flip_margin_ranks": quality[n].flip_margin_ranks}
        for n, (r, _) in runners.items()]
    fp32 = min((r for r in rows if r["precision"] == "fp32" and r["candidate"] != "pytorch eager"),
               key=lambda r: r["vs_eager"])
    kept = min((r for r in rows if r["top1"] >= MIN_TOP1 and r["candidate"] != "pytorch eager"),
               key=lambda r: r["vs_eager"], default=None)
    ratios = {n: paired_ratio(scale_blocks, f"{n} @448", f"{n} @224") for n in dynamic}
    best_dyn = min(dynamic[1:], key=lambda n: scaling[f"{n} @224"].p50)
    targets = [
        _target("best fp32 artifact / eager", fp32["vs_eager"], LIMITS["fp32_vs_eager"], fp32["candidate"]),
        _target(f"best artifact with >= {MIN_TOP1:.0%} top-1 / eager", kept["vs_eager"] if kept else None,
                LIMITS["any_precision_vs_eager"], kept["candidate"] if kept else "none kept the agreement"),
        _target("448 x 448 / 224 x 224 latency", ratios[best_dyn], LIMITS["448_vs_224"], best_dyn),
    ]
    load = os.getloadavg()
    _print(rows, scaling, ratios, targets, len(samples), args, load, busy)
    report = BenchReport("targets", device, vars(args) | {"json": str(args.json)}, artifacts,
                         extra={"candidates": rows, "targets": targets, "scaling_448_vs_224": ratios,
                                "scaling": jsonable(scaling), "samples": len(samples), "blocks": blocks,
                                "scaling_blocks": scale_blocks, "load_average_1_5_15": load,
                                "other_cpus": busy,
                                "reliable": not any(v and v > 0.25 for v in busy.values())})
    write_json(report, args.json)
    say(f"wrote {args.json}")


def _artifact(name: str, runner: Runner, path: Path | None, stats: Any) -> ArtifactBench:
    result = BenchResult(1, 224, 224, "latency", latency=stats, throughput=1000.0 / stats.mean)
    return ArtifactBench(name, str(path or ""), artifact_sha256(path) if path else "",
                         sum(p.stat().st_size for p in artifact_files(path)) if path else 0, runner.backend,
                         runner.precision, runner.metadata.model if runner.metadata else "",
                         list(runner.inputs[0].shape), [result])


def _target(name: str, value: float | None, limit: float, by: str) -> dict[str, Any]:
    passed = value is not None and value <= limit
    return {"target": name, "value": value, "limit": limit, "by": by, "result": "PASS" if passed else "MISS"}


def _print(rows: list[dict[str, Any]], scaling: dict[str, Any], ratios: dict[str, float],
           targets: list[dict[str, Any]], samples: int, args: argparse.Namespace, load: tuple[float, ...],
           busy: dict[str, float | None]) -> None:
    print(f"\n| candidate | precision | p50 ms | min ms | / eager | / eager (p50, min) | top-1 vs fp32 ({samples} "
          "photos) | flips' fp32 margin ranks | max abs err |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        ranks = ", ".join(str(k) for k in r["flip_margin_ranks"]) or "-"
        print(f"| {r['candidate']} | {r['precision']} | {r['p50_ms']:.1f} | {r['min_ms']:.1f} | {r['vs_eager']:.2f} "
              f"| {r['vs_eager_p50']:.2f}, {r['vs_eager_min']:.2f} | {r['top1']:.1%} | {ranks} | {r['max_abs']:.2g} |")
    print(f"(a flip's rank: its sample's fp32 top-1/top-2 margin among all {samples}, 0 = the narrowest)")
    print("\n| candidate | p50 at 224 ms | p50 at 448 ms | 448 / 224 |")
    print("|---|---:|---:|---:|")
    for n, ratio in ratios.items():
        print(f"| {n} | {scaling[f'{n} @224'].p50:.1f} | {scaling[f'{n} @448'].p50:.1f} | {ratio:.2f} |")
    print(f"\n{args.model}, batch 1, {args.threads} threads, {args.rounds} alternating rounds of 1 settling + 3 timed "
          "runs per candidate; ratios are medians over rounds of neighbouring blocks' medians; load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; CPUs busy with other processes: "
          + ", ".join(f"{v if v is not None else '?'} ({k})" for k, v in busy.items()))
    if any(v and v > 0.25 for v in busy.values()):
        print("WARNING: other processes kept the CPUs busy while timing: the ratios are not trustworthy "
              "(PyTorch eager with 2 threads suffers most, which flatters every ratio to it)")
    for t in targets:
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"{t['result']:4s}  {t['target']}: {value} (target <= {t['limit']}) by {t['by']}")


if __name__ == "__main__":
    main()
