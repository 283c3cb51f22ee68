"""The TensorRT int8 Q/DQ ONNX, made as before and as now, against PyTorch, run in onnxruntime.

    python -m experiments.trt_int8 [--model glnet_tiny] [--seed 7] [--crops 10] [--json F]

One question: does the Model Optimizer-style file (`export.precision.QdqRecipe()`: no
output quantization, float consumers read float tensors, the float rest in fp16 with GLMix's
fp32 nodes kept) agree with PyTorch at least as well as the file made before
(`LEGACY_QDQ`: fp32 everywhere but the int8 ops, every int8 op's output re-quantized)? The
steps in between are measured too, so each change shows its own effect.

Model: `glnet.testing.seeded_model` (perturbed weights, as the tests use), its portable ONNX
at 224 x 224 with a dynamic batch. Calibration: the sample photographs, whole (as
`tests/export/test_precision.py` does). Evaluation: the photographs and `--crops` random
crops of each (seed 2, none seen in calibration), preprocessed as the metadata says.
onnxruntime runs each file through `runtimes.load` (as verification does); the last row is
the new file in a bare `InferenceSession` with every default optimizer, which shows why
`runtimes.onnxruntime` turns WeightBiasQuantization off. Results: docs/benchmarks/<date>-trt-int8.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import runtimes
from artifacts.metadata import ArtifactMetadata
from artifacts.photos import sample_photo_paths
from artifacts.preprocess import preprocess
from bench.report import write_json
from experiments.results import default_help, results_path
from experiments.targets import photo_crops, say
from export.formats import build
from export.passes.layer_norm import fuse_channel_layer_norms
from export.precision import LEGACY_QDQ, QdqRecipe, calibration_samples, int8_qdq_model, sensitive_nodes
from glnet.testing import seeded_model
from runtimes.torch import TorchRunner
from verification.metrics import compare_outputs, top1_flip_leads, top1_leads

RECIPES = {
    "before: fp32 rest, outputs re-quantized": LEGACY_QDQ,
    "+ no output quantization": QdqRecipe(output_quantization=False, float_consumers=False, fp16_rest=False),
    "+ float consumers read float": QdqRecipe(fp16_rest=False),
    "now: + fp16 rest, GLMix nodes fp32": QdqRecipe(),
}


def metrics(reference: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    m = compare_outputs(reference, out)
    cos = (reference * out).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(out, axis=1))
    return {"top1": m["top1"], "max_rel": m["max_rel"], "min_cosine": m["cosine"],
            "median_cosine": float(np.median(cos)), "flip_leads": top1_flip_leads(reference, out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glnet_tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--crops", type=int, default=10, help="evaluation crops per photograph (seed 2)")
    parser.add_argument("--json", type=Path, default=None, help=default_help("trt-int8"))
    args = parser.parse_args()

    net = seeded_model(args.model, seed=args.seed)
    photos = sample_photo_paths()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="glnet-trt-int8-") as tmp:
        work = Path(tmp)
        source = build("onnxruntime", net, work / "m.onnx", dynamic="batch").path
        model = onnx.load(source)
        fuse_channel_layer_norms(model)
        meta = ArtifactMetadata.from_props({p.key: p.value for p in model.metadata_props})
        samples = calibration_samples(photos, meta, len(photos))
        crops = photo_crops(seed=2, crops=args.crops)
        inputs = np.stack([preprocess(img, meta)[0] for img in crops])
        with TorchRunner(net) as torch_runner:
            reference = np.concatenate([torch_runner.infer(inputs[i:i + 8]) for i in range(0, len(inputs), 8)])
        unquantized = sensitive_nodes(model, include_slot_matmuls=True)
        fp32 = sensitive_nodes(model)
        for name, recipe in RECIPES.items():
            path = work / f"{len(rows)}.onnx"
            onnx.save(int8_qdq_model(model, samples, unquantized, fp32, recipe=recipe), path)
            with runtimes.load(path) as runner:
                out = np.concatenate([runner.infer(inputs[i:i + 8]) for i in range(0, len(inputs), 8)])
            rows[name] = metrics(reference, out)
            say(f"{name}: {rows[name]['top1']:.1%} top-1, max rel {rows[name]['max_rel']:.4f}")
        import onnxruntime as ort  # the bare session, every default optimizer on

        bare = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = np.concatenate([bare.run(None, {"input": inputs[i:i + 8]})[0] for i in range(0, len(inputs), 8)])
        rows["now, in a bare InferenceSession (WeightBiasQuantization on)"] = metrics(reference, out)
    report = {"question": "TensorRT int8 Q/DQ ONNX before and now, against PyTorch, in onnxruntime",
              "model": args.model, "seed": args.seed, "calibration": f"{len(samples)} sample photographs",
              "samples": len(inputs), "median_lead": float(np.median(top1_leads(reference))),
              "onnxruntime": ort.__version__, "results": rows}
    target = args.json or results_path("trt-int8")
    write_json(report, target)
    for name, row in rows.items():
        leads = row["flip_leads"]
        print(f"{name:62s} top-1 {row['top1']:6.1%}  max rel {row['max_rel']:.4f}  cosine min "
              f"{row['min_cosine']:.5f} median {row['median_cosine']:.6f}  {len(leads)} flips, at leads up to "
              f"{max(leads, default=0):.3f} (median lead {report['median_lead']:.3f})")
    print(f"-> {target}")


if __name__ == "__main__":
    main()
