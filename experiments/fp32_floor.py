"""How close can an fp32 artifact get to 0.40 x PyTorch eager (the target for the best fp32
artifact at batch 1, 224 x 224)? OpenVINO's own answer.

    python -m experiments.fp32_floor [--model glnet_4g] [--threads 2] [--rounds 8] [--json F]

Exports the model (dynamic batch), compiles it in OpenVINO f32 for 1 x 3 x 224 x 224 with
per-layer counters on, and times it in alternation with PyTorch eager. Prints OpenVINO's
time per layer kind, split into compute kernels (convolutions, fully-connected and matmul
layers) and the rest (reorders, transposes, adds, normalisations, softmaxes), and the ratio
of the compute kernels alone to eager: no graph rewrite that keeps those kernels can beat it.
Then puts the kernels against the machine's fp32 matrix-multiply ceiling (a 2048^3 matmul
in PyTorch, as the field notes measured it): how fast they run, and what the model's MACs
would take if every one of them ran at that ceiling. Results: docs/benchmarks/<date>-fp32_floor.json
unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifacts.backends import import_openvino
from artifacts.openvino_ir import read_ir_metadata
from bench.runner import interleave, paired_ratio
from bench.timing import make_inputs
from experiments.results import default_help, results_path
from export.formats import build
from glnet.complexity import count_complexity
from glnet.testing import seeded_model
from runtimes.openvino import PRECISION_HINTS, precision_to_ask
from runtimes.torch import TorchRunner

COMPUTE = frozenset({"Convolution", "GroupConvolution", "FullyConnected", "MatMul"})
FP32_LIMIT = 0.40  # the best fp32 artifact / PyTorch eager, batch 1 at 224 x 224


def compile_openvino(xml: Path, shape: tuple[int, ...], threads: int | None = None, precision: str | None = None,
                     device: str = "CPU", **config: Any) -> Any:
    """The IR compiled static for `shape` through OpenVINO's own API, with extra settings
    (PERF_COUNT, PERFORMANCE_HINT): the compiled model itself, whose infer requests give the
    per-layer counters a runner keeps to itself. The precision asked is `precision`, else the
    one the IR was built for (its metadata), else the device's own, as
    `runtimes.openvino.OpenVinoRunner` asks."""
    core = import_openvino().Core()
    model = core.read_model(str(xml))
    precision = precision_to_ask(read_ir_metadata(model), precision)
    model.reshape({0: list(shape)})
    settings = dict(config)
    if precision is not None:
        settings["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision.lower()]
    if threads:
        settings["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model, device.upper(), settings)


def sgemm_ceiling(threads: int, n: int = 2048, repeats: int = 8) -> float:
    """GFLOP/s of the best of `repeats` n x n x n fp32 matmuls on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # the first call sets up the BLAS threads
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glnet_4g")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (each: 1 settling + 3 timed runs)")
    parser.add_argument("--json", type=Path, help=default_help("fp32_floor"))
    args = parser.parse_args()
    out: Path = args.json or results_path("fp32_floor")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = seeded_model(args.model, seed=0)
    shape = (1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        path = build("onnxruntime", model, Path(tmp) / f"{args.model}.onnx", dynamic="batch").path
        # The IR as shipped for f32 compute (its residual convolutions folded in the file).
        xml = build("openvino-fp32", path, Path(tmp) / f"{args.model}_f32.xml").path
        compiled = compile_openvino(xml, shape, threads=args.threads, precision="fp32",
                                    PERFORMANCE_HINT="LATENCY", PERF_COUNT="YES")
    request = compiled.create_infer_request()
    eager = TorchRunner(model, threads=args.threads)
    fns = {"openvino f32": lambda x: request.infer({0: x}), "pytorch eager": eager.infer}
    blocks: dict[str, list[float]] = {}
    stats = interleave(fns, make_inputs(shape), args.rounds, blocks=blocks)
    # The counters after the timing, so that reading them is not timed: per-layer times
    # do not depend on the loop around them.
    kinds: dict[str, list[float]] = defaultdict(list)
    for x in make_inputs(shape, buffers=10):
        request.infer({0: x})
        per_kind: dict[str, float] = defaultdict(float)
        for info in request.profiling_info:
            per_kind[info.node_type] += info.real_time.total_seconds() * 1000
        for kind, ms in per_kind.items():
            kinds[kind].append(ms)
    layer_ms = {kind: float(np.median(v)) for kind, v in kinds.items()}
    compute = sum(ms for kind, ms in layer_ms.items() if kind in COMPUTE)
    rest = sum(ms for kind, ms in layer_ms.items() if kind not in COMPUTE)
    print(f"{args.model}, {'x'.join(map(str, shape))}, {args.threads} threads, {args.rounds} rounds")
    for name, s in stats.items():
        print(f"  {name:14s} p50 {s.p50:6.1f} ms  min {s.min:6.1f} ms")
    print("  OpenVINO f32 layer time by kind (p50 per run):")
    for kind, ms in sorted(layer_ms.items(), key=lambda kv: -kv[1]):
        if ms >= 0.05:
            print(f"    {kind:18s} {ms:6.2f} ms{'  (compute)' if kind in COMPUTE else ''}")
    print(f"  compute kernels {compute:.1f} ms + the rest {rest:.1f} ms")
    eager_p50 = stats["pytorch eager"].p50
    paired = paired_ratio(blocks, "openvino f32", "pytorch eager")
    print(f"  openvino f32 / eager: {paired:.3f} (paired blocks); "
          f"compute kernels alone / eager p50: {compute / eager_p50:.3f} "
          f"(target for the best fp32 artifact: <= {FP32_LIMIT})")
    ceiling = sgemm_ceiling(args.threads)
    gflop = 2 * count_complexity(args.model, shape[2:]).macs / 1e9
    at_ceiling = gflop / ceiling * 1000
    print(f"  fp32 matmul ceiling (2048^3, {args.threads} threads): {ceiling:.0f} GFLOP/s; the model's "
          f"{gflop:.2f} GFLOP take {at_ceiling:.1f} ms there ({at_ceiling / eager_p50:.3f} of eager p50); "
          f"OpenVINO's compute kernels run at {gflop / compute * 1000 / ceiling:.0%} of that ceiling")
    out.write_text(json.dumps({
        "model": args.model, "shape": list(shape), "threads": args.threads, "rounds": args.rounds,
        "p50_ms": {n: s.p50 for n, s in stats.items()}, "min_ms": {n: s.min for n, s in stats.items()},
        "openvino_f32_vs_eager": paired, "layer_ms": layer_ms, "compute_ms": compute, "rest_ms": rest,
        "compute_vs_eager_p50": compute / eager_p50, "limit": FP32_LIMIT, "sgemm_gflops": ceiling,
        "model_gflop": gflop, "at_ceiling_ms": at_ceiling}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
