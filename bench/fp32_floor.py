"""How close can an fp32 artifact get to the issue's 0.40 x eager? OpenVINO's own answer.

    python -m bench.fp32_floor [--model glnet_4g] [--threads 2] [--rounds 8]

Exports the model (dynamic batch), compiles it in OpenVINO f32 for 1 x 3 x 224 x 224 with
per-layer counters on, and times it in alternation with PyTorch eager. Prints OpenVINO's
time per layer kind, split into compute kernels (convolutions, fully-connected and matmul
layers) and the rest (reorders, transposes, adds, normalisations, softmaxes), and the ratio
of the compute kernels alone to eager: no graph rewrite that keeps those kernels can beat it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import glnet
from bench.pools import compile_openvino
from export.onnx import OnnxExportOptions, export_onnx
from glnet.testing import perturb_weights_

COMPUTE = frozenset({"Convolution", "GroupConvolution", "FullyConnected", "MatMul"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glnet_4g")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds of 3 timed runs each")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = perturb_weights_(glnet.create_model(args.model)).eval()
    shape = (1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        export_onnx(model, path, OnnxExportOptions(dynamic="batch"))
        compiled = compile_openvino(path, threads=args.threads, precision="fp32", shape=shape,
                                    PERFORMANCE_HINT="LATENCY", PERF_COUNT="YES")
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    xt = torch.from_numpy(x)
    wall: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        request.infer({0: x})  # settling run after the other runtime
        for _ in range(3):
            start = time.perf_counter()
            request.infer({0: x})
            wall["openvino f32"].append((time.perf_counter() - start) * 1000)
            per_kind: dict[str, float] = defaultdict(float)
            for info in request.profiling_info:
                per_kind[info.node_type] += info.real_time.total_seconds() * 1000
            for kind, ms in per_kind.items():
                kinds[kind].append(ms)
        with torch.inference_mode():
            model(xt)
            for _ in range(3):
                start = time.perf_counter()
                model(xt)
                wall["pytorch eager"].append((time.perf_counter() - start) * 1000)
    eager = float(np.median(wall["pytorch eager"]))
    layer_ms = {kind: float(np.median(v)) for kind, v in kinds.items()}
    compute = sum(ms for kind, ms in layer_ms.items() if kind in COMPUTE)
    rest = sum(ms for kind, ms in layer_ms.items() if kind not in COMPUTE)
    print(f"{args.model}, {'x'.join(map(str, shape))}, {args.threads} threads, {args.rounds} rounds")
    for name, values in wall.items():
        print(f"  {name:14s} p50 {np.median(values):6.1f} ms  min {min(values):6.1f} ms")
    print("  OpenVINO f32 layer time by kind (p50 per run):")
    for kind, ms in sorted(layer_ms.items(), key=lambda kv: -kv[1]):
        if ms >= 0.05:
            print(f"    {kind:18s} {ms:6.2f} ms{'  (compute)' if kind in COMPUTE else ''}")
    print(f"  compute kernels {compute:.1f} ms + the rest {rest:.1f} ms")
    print(f"  openvino f32 / eager: {np.median(wall['openvino f32']) / eager:.3f}; "
          f"compute kernels alone / eager: {compute / eager:.3f} (the issue's target: 0.40)")


if __name__ == "__main__":
    main()
