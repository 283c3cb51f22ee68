"""Classify every image in a folder with an exported GLNet, on several threads at once.

    python examples/classify_folder.py glnet_4g.onnx photos/ [--top-k 3] [--workers 4] [--csv out.csv]

All the app knows is the artifact's path: the back-end comes from the file type (.onnx,
.xml, .engine), and the input size, resize, crop, normalisation and class names from the
metadata stored in it. One Predictor serves every worker thread. Files that are not
readable images are reported and skipped; the exit status is 1 only when nothing could
be classified.
"""

from __future__ import annotations

import argparse
import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serving.predictor import Predictor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="an exported GLNet (.onnx, .xml or .engine)")
    parser.add_argument("folder", type=Path, help="a folder of images (not searched recursively)")
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")
    parser.add_argument("--workers", type=int, default=4, help="threads classifying at once (default 4)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--csv", type=Path, help="also write image, rank, class, label, probability rows here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 1
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {args.folder}", file=sys.stderr)
        return 1

    with Predictor(args.artifact, device=args.device, top_k=args.top_k) as predictor:

        def classify(path: Path):  # type: ignore[no-untyped-def]
            try:
                return path, predictor.predict(path), None
            except ValueError as exc:  # an unreadable, too small or odd image: skip it, say why
                return path, None, str(exc)

        print(f"{len(files)} images, {predictor.backend}, {args.workers} threads", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(classify, files))  # map keeps the folder's order

    rows = []
    for path, prediction, error in results:
        if prediction is None:
            print(f"{path.name}: skipped: {error}", file=sys.stderr)
            continue
        best = ", ".join(f"{c.label} {c.probability:.1%}" for c in prediction.top)
        print(f"{path.name}: {best}")
        rows += [(path.name, rank, c.index, c.label, f"{c.probability:.6f}")
                 for rank, c in enumerate(prediction.top, 1)]
    if args.csv is not None:
        with args.csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "rank", "class", "label", "probability"])
            writer.writerows(rows)
    classified = sum(1 for _, p, _ in results if p is not None)
    print(f"classified {classified} of {len(files)} images", file=sys.stderr)
    return 0 if classified else 1


if __name__ == "__main__":
    sys.exit(main())
