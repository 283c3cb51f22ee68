"""Two targets for the portable ONNX export, measured in one run (ratios: shared machines are noisy).

    python -m experiments.onnx_speed [--model glnet_4g] [--rounds 20] [--threads 2] [--export-time] [--json F]

1. onnxruntime latency of the exported file / PyTorch eager latency of the same model
   (reference form, inference mode), batch 1 at 224, the two timed in alternation;
   target <= 0.45.
2. with --export-time: wall time of a dynamic-shape export (`glnet-export onnx --dynamic shape`,
   built through the format table); target < 45 s.

Results: docs/benchmarks/<date>-onnx_speed.json unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import runtimes
from bench.runner import interleave, paired_ratio
from bench.timing import make_inputs
from experiments.results import default_help, results_path
from export.formats import build
from glnet.testing import seeded_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glnet_4g")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds of timed blocks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--onnx", type=Path, help="an existing export to time instead of exporting")
    parser.add_argument("--export-time", action="store_true", help="also time a --dynamic shape export")
    parser.add_argument("--json", type=Path, help=default_help("onnx_speed"))
    args = parser.parse_args()
    out: Path = args.json or results_path("onnx_speed")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = seeded_model(args.model, seed=0)
    results: dict[str, object] = {"model": args.model, "threads": args.threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx
        if path is None:
            path = Path(tmp) / f"{args.model}.onnx"
            build("onnxruntime", model, path, dynamic="batch")
        if args.export_time:
            start = time.perf_counter()
            build("onnxruntime", model, Path(tmp) / "shape.onnx", dynamic="shape")
            results["export_dynamic_shape_s"] = round(time.perf_counter() - start, 1)
            print(f"export --dynamic shape: {results['export_dynamic_shape_s']} s (target < 45 s)")

        inputs = make_inputs((1, 3, 224, 224))
        with runtimes.load(path, threads=args.threads) as ort_runner:

            def eager(x: np.ndarray) -> object:
                with torch.inference_mode():
                    return model(torch.from_numpy(x))

            blocks: dict[str, list[float]] = {}
            stats = interleave({"eager": eager, "onnxruntime": ort_runner.infer}, inputs, args.rounds, blocks=blocks)
    # Median over rounds of neighbouring-block ratios: slow load changes cancel out.
    ratio = paired_ratio(blocks, "onnxruntime", "eager")
    for name, s in stats.items():
        print(f"{name:12s} p50 {s.p50:7.1f} ms  min {s.min:7.1f} ms  p90 {s.p90:7.1f} ms  ({s.runs} runs)")
    print(f"onnxruntime / eager (paired block medians): {ratio:.3f}  (target <= 0.45)")
    results.update({name: vars(s) for name, s in stats.items()})
    results["ratio_paired"] = round(ratio, 3)
    results["ratio_p50"] = round(stats["onnxruntime"].p50 / stats["eager"].p50, 3)
    results["ratio_min"] = round(stats["onnxruntime"].min / stats["eager"].min, 3)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
