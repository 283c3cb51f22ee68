"""The speed of the files as shipped: bare runtime APIs against our runners and eager PyTorch.

    python -m experiments.artifact_speed [--model glnet_4g] [--threads 2] [--rounds 12] [--json F] [--wait-idle S]

Builds the files a user would ship through the format table (the portable ONNX, the onnxruntime-targeted ONNX and
its .ort form, an OpenVINO IR built for f32 and one for the device's own precision), then times in one
process, in alternating blocks (`bench.runner.interleave`), batch 1 at 224:

- each file through the bare runtime API, as an app would write it, with no code of ours:
  `onnxruntime.InferenceSession(path, opts)`; `Core().read_model(xml)`, `model.reshape`
  to the input shape (a dynamic IR compiled dynamic is 15-20% slower), `compile_model`
  with INFERENCE_PRECISION_HINT only when the file says it was built for one;
- the same file through `runtimes.load` (what `glnet-export bench` measures);
- PyTorch eager on the reference model.

Both bare and runner sessions get the same threads (intra-op `--threads`, inter-op 1).
Ratios are medians over rounds of neighbouring blocks (`paired_ratio`). Targets: bare / runner
within 3% for every file (our runners cost nothing over the bare API); onnxruntime-targeted
(bare) / eager <= 0.48 (0.45 stretch). Results: docs/benchmarks/<date>-artifact_speed.json
unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import glnet
import runtimes
from bench.runner import interleave, paired_ratio
from bench.timing import make_inputs
from experiments.results import default_help, results_path
from experiments.targets import quiet_moment, say
from export.formats import build
from glnet.testing import seeded_model

BARE_TOLERANCE = 0.03
TARGETED_LIMIT, TARGETED_STRETCH = 0.48, 0.45


def bare_onnxruntime(path: Path, threads: int) -> Any:
    """An InferenceSession as an app makes one: onnxruntime's own API, no glnet-export code."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def bare_openvino(xml: Path, threads: int, shape: tuple[int, ...], hint: str | None) -> Any:
    """OpenVINO's own API: read, reshape to the shape the app feeds, compile, infer."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape({0: list(shape)})
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    request = core.compile_model(model, "CPU", config).create_infer_request()

    def infer(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data

    return infer


def build_files(model: glnet.GLNet, work: Path) -> dict[str, Path]:
    """The five files, built through the format table as `glnet-export` builds them."""
    paths = {"portable": work / "portable.onnx", "ort": work / "portable_ort.onnx", "ort_format": work / "model.ort",
             "ov_f32": work / "f32.xml", "ov_auto": work / "auto.xml"}
    start = time.perf_counter()
    build("onnxruntime", model, paths["portable"], dynamic="batch")
    build("onnxruntime-target", paths["portable"], paths["ort"])
    build("onnxruntime-target", paths["portable"], paths["ort_format"], fmt="ort")
    build("openvino-fp32", paths["portable"], paths["ov_f32"])
    build("openvino-auto", paths["portable"], paths["ov_auto"])
    say(f"wrote the five files in {time.perf_counter() - start:.0f} s")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glnet_4g")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds (each: 1 settling + 3 timed runs)")
    parser.add_argument("--json", type=Path, help=default_help("artifact_speed"))
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before timing, wait up to this long for other processes to leave the CPUs")
    args = parser.parse_args()
    out: Path = args.json or results_path("artifact_speed")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = seeded_model(args.model, seed=0)
    shape = (1, 3, 224, 224)

    def eager(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    with tempfile.TemporaryDirectory(prefix="glnet-artifact-speed-") as tmp:
        paths = build_files(model, Path(tmp))
        runners = {key: runtimes.load(paths[key], threads=args.threads) for key in paths}
        candidates = {
            "pytorch eager": eager,
            "onnxruntime portable, bare": bare_onnxruntime(paths["portable"], args.threads),
            "onnxruntime portable, runner": runners["portable"].infer,
            "onnxruntime targeted, bare": bare_onnxruntime(paths["ort"], args.threads),
            "onnxruntime targeted, runner": runners["ort"].infer,
            "onnxruntime .ort format, bare": bare_onnxruntime(paths["ort_format"], args.threads),
            "onnxruntime .ort format, runner": runners["ort_format"].infer,
            "openvino f32 IR, bare": bare_openvino(paths["ov_f32"], args.threads, shape, "f32"),
            "openvino f32 IR, runner": runners["ov_f32"].infer,
            "openvino auto IR, bare": bare_openvino(paths["ov_auto"], args.threads, shape, None),
            "openvino auto IR, runner": runners["ov_auto"].infer,
        }
        precisions = {key: r.precision for key, r in runners.items()}
        x = make_inputs(shape)[0]
        for name in ("onnxruntime targeted, bare", "openvino f32 IR, bare"):  # the bare paths compute the same
            want = eager(x).numpy()  # type: ignore[attr-defined]
            got = np.asarray(candidates[name](x))
            assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-3, name
        busy = quiet_moment(args.wait_idle)
        say(f"timing {len(candidates)} candidates, {args.rounds} rounds")
        blocks: dict[str, list[float]] = {}
        stats = interleave(candidates, make_inputs(shape), args.rounds, blocks=blocks)
        for r in runners.values():
            r.close()

    eager_name = "pytorch eager"
    rows = {n: {"p50_ms": s.p50, "min_ms": s.min, "vs_eager": paired_ratio(blocks, n, eager_name)}
            for n, s in stats.items()}
    pairs = {f: paired_ratio(blocks, f"{f}, bare", f"{f}, runner")
             for f in ("onnxruntime portable", "onnxruntime targeted", "onnxruntime .ort format", "openvino f32 IR",
                       "openvino auto IR")}
    print(f"\n{'candidate':32s} {'p50 ms':>8s} {'min ms':>8s} {'/ eager':>8s}")
    for n, row in rows.items():
        print(f"{n:32s} {row['p50_ms']:8.1f} {row['min_ms']:8.1f} {row['vs_eager']:8.3f}")
    print()
    for f, ratio in pairs.items():
        verdict = "met" if abs(ratio - 1) <= BARE_TOLERANCE else "MISSED"
        print(f"{f:24s} bare / runner {ratio:.3f} (target within {BARE_TOLERANCE:.0%}: {verdict})")
    targeted = rows["onnxruntime targeted, bare"]["vs_eager"]
    verdict = ("met, and the stretch target" if targeted <= TARGETED_STRETCH else "met" if targeted <= TARGETED_LIMIT
               else "MISSED")
    print(f"onnxruntime targeted (bare) / eager {targeted:.3f} (target <= {TARGETED_LIMIT}, "
          f"stretch <= {TARGETED_STRETCH}: {verdict})")
    print(f"precisions: {precisions}; other load before timing: {busy} CPUs")
    out.write_text(json.dumps({"model": args.model, "threads": args.threads, "rows": rows,
                               "bare_vs_runner": pairs, "precisions": precisions,
                               "busy_cpus_before": busy}, indent=2) + "\n")
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
