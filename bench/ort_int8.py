"""onnxruntime int8 (export.onnxruntime_int8) against the fp32 file it came from, in one run.

    python -m bench.ort_int8 [--model glnet_4g] [--calib 64] [--crops 90] [--batch 1 8] [--trt]

Exports the model (weights perturbed by glnet.testing, so activations look trained),
calibrates on crops of scikit-image's sample photographs (written as PNGs), then reports
the top-1 agreement and cosine of int8 vs fp32 onnxruntime on the sample photographs plus
random crops of them, and the latency ratio int8 / fp32 with the two timed in alternation:
2-thread wall time, and 1-thread CPU time (steadier when others share the machine).
With --trt the TensorRT Q/DQ file of export.precision is timed in onnxruntime as well.
Team target: ratio <= 0.6 at batch 1 with top-1 agreement >= 99%.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# Photographs for calibration, disjoint in part from the evaluation photographs.
CALIB_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_right.png", "ihc.png",
                "grass.png", "gravel.png", "brick.png", "camera.png", "coins.png", "hubble_deep_field.jpg",
                "retina.jpg", "color.png", "clock_motion.png", "page.png")


def _crop(img: Image.Image, rng: np.random.Generator, low: float, high: float) -> Image.Image:
    side = int(rng.uniform(low, high) * min(img.size))
    x, y = (int(rng.integers(0, d - side + 1)) for d in img.size)
    return img.crop((x, y, x + side, y + side))


def write_calibration(folder: Path, count: int) -> None:
    from glnet_export.photos import _package_dir

    root = _package_dir("skimage")
    assert root is not None, "scikit-image is needed for the calibration photographs"
    rng = np.random.default_rng(123)
    for i in range(count):
        img = Image.open(root / "data" / CALIB_PHOTOS[i % len(CALIB_PHOTOS)]).convert("RGB")
        _crop(img, rng, 0.35, 1.0).save(folder / f"crop_{i:03d}.png")


def eval_inputs(meta, crops: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    from glnet_export.photos import sample_photo_paths
    from glnet_export.preprocess import preprocess

    paths = sample_photo_paths()
    rng = np.random.default_rng(7)
    images = [Image.open(p).convert("RGB") for p in paths]
    xs = [preprocess(img, meta) for img in images]
    xs += [preprocess(_crop(images[i % len(images)], rng, 0.3, 0.9), meta) for i in range(crops)]
    return np.concatenate(xs)


def session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from runtimes.onnxruntime import session_options

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def alternated(paths: list[Path], batch: int, threads: int, clock, rounds: int, reps: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Median seconds per run of each file, the files timed in turn, `reps` runs at a time."""
    sessions = [session(p, threads) for p in paths]
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for s in sessions:
        s.run(None, {"input": x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for s, t in zip(sessions, times, strict=True):
            for _ in range(reps):
                start = clock()
                s.run(None, {"input": x})
                t.append(clock() - start)
    return [float(np.median(t)) for t in times]


def main() -> None:
    import onnx

    import glnet
    from export.onnx import export_onnx
    from export.onnxruntime_int8 import quantize_onnxruntime_int8
    from glnet.testing import perturb_weights_
    from glnet_export.metadata import ArtifactMetadata

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="glnet_4g")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--crops", type=int, default=90)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--trt", action="store_true", help="also time export.precision's TensorRT Q/DQ file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)
        (work / "calib").mkdir()
        write_calibration(work / "calib", args.calib)
        fp32, int8 = work / "fp32.onnx", work / "int8.onnx"
        export_onnx(perturb_weights_(glnet.create_model(args.model), seed=11).eval(), fp32)
        result = quantize_onnxruntime_int8(fp32, int8, work / "calib")
        print(f"int8: {result.qdq_nodes} Q/DQ nodes, quantized {result.quantized_ops}, "
              f"float: {result.kept_float.describe()}, {result.seconds:.1f} s")
        files = [fp32, int8]
        if args.trt:
            from export.precision import PrecisionOptions, write_precision_onnx

            files.append(work / "trt.int8.onnx")
            write_precision_onnx(fp32, files[-1], PrecisionOptions(precision="int8", calibration=work / "calib"))
        meta = ArtifactMetadata.from_props({p.key: p.value for p in onnx.load(fp32).metadata_props})
        x = eval_inputs(meta, args.crops)
        ref, got = ([s.run(None, {"input": x[i : i + 1]})[0][0] for i in range(len(x))]
                    for s in (session(fp32, 2), session(int8, 2)))
        a, b = np.stack(list(ref)), np.stack(list(got))
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        print(f"vs fp32 on {len(x)} inputs: top-1 agreement {np.mean(a.argmax(1) == b.argmax(1)):.3f}, "
              f"cosine mean {cos.mean():.5f} min {cos.min():.5f}")
        for batch in args.batch:
            slow = batch > 1
            wall = alternated(files, batch, 2, time.perf_counter, 3 if slow else 6, 1 if slow else 4)
            cpu = alternated(files, batch, 1, time.process_time, 2 if slow else 4, 1 if slow else 3)
            for path, w, c in zip(files, wall, cpu, strict=True):
                print(f"batch {batch} {path.name:14s} 2-thread wall {w * 1e3:7.1f} ms ({w / wall[0]:.3f} of fp32), "
                      f"1-thread CPU {c * 1e3:7.1f} ms ({c / cpu[0]:.3f})")


if __name__ == "__main__":
    main()
