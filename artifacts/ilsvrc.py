"""The ILSVRC2012 (ImageNet-1k) validation set as distributed: a flat folder of
ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG and the labels in one of two
files.

- The devkit's `ILSVRC2012_validation_ground_truth.txt` (ILSVRC2012_devkit_t12/data/): line i
  is the class of image i as an ILSVRC2012_ID, 1 to 1000. Those IDs are NOT the class
  indices of torchvision's and timm's models (which number the synsets in sorted order,
  n01440764 = 0) and they are not sorted by synset either: ID 1 is n02119789 (kit fox).
  The devkit's `meta.mat` (beside the ground truth in data/) maps each ID to its synset, so
  that file is needed too; without it the IDs cannot be converted, and subtracting 1 (a
  common mistake) gives labels that are wrong for almost every image.
- Kaggle's `LOC_val_solution.csv` (ImageNet Object Localization Challenge): `ImageId,
  PredictionString`, the string starting with the synset ID, so it maps directly.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .errors import LabelledDataError

VAL_IMAGE = re.compile(r"^ILSVRC2012_val_(\d{8})$", re.IGNORECASE)
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_HEADER = ("ImageId", "PredictionString")


def image_number(path: Path) -> int | None:
    """12 for ILSVRC2012_val_00000012.JPEG; None for any other name."""
    match = VAL_IMAGE.match(path.stem)
    return int(match.group(1)) if match else None


def is_devkit_ground_truth(path: Path) -> bool:
    """A file of one integer per line (the devkit's ground truth, whatever it is named)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return bool(lines) and all(line.isdigit() for line in lines)


def is_kaggle_solution(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip().split(",")
    return tuple(part.strip() for part in first) == KAGGLE_HEADER


def devkit_synsets(ground_truth: Path, meta_mat: Path | None = None) -> dict[int, str]:
    """Image number -> synset ID from the devkit's ground truth and its meta.mat.

    `meta_mat` defaults to the meta.mat beside the ground truth (the devkit's data/ folder).
    """
    meta_mat = meta_mat or ground_truth.parent / DEVKIT_META
    if not meta_mat.is_file():
        raise LabelledDataError(
            f"{ground_truth} holds the devkit's ILSVRC2012_IDs, which are not the class order of torchvision "
            f"or timm models (ID 1 is n02119789 kit fox, class 278): put the devkit's {DEVKIT_META} (from "
            f"ILSVRC2012_devkit_t12/data/) beside it, or pass --labels {KAGGLE_SOLUTION} (Kaggle's, names synsets)")
    id_to_synset = _meta_mat_ids(meta_mat)
    numbers: dict[int, str] = {}
    with open(ground_truth, encoding="utf-8") as f:
        for line_no, line in enumerate((line.strip() for line in f), 1):
            if not line:
                continue
            class_id = int(line)
            if class_id not in id_to_synset:
                raise LabelledDataError(f"{ground_truth} line {line_no}: ILSVRC2012_ID {class_id} is not a class of "
                                  f"{meta_mat} (IDs 1 to 1000)")
            numbers[line_no] = id_to_synset[class_id]
    return numbers


def _meta_mat_ids(meta_mat: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID for the 1000 leaf synsets of the devkit's meta.mat (the others,
    with children, are WordNet's inner nodes, IDs above 1000)."""
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # scipy comes with scikit-image, a dependency; said plainly if it is gone
        raise LabelledDataError(f"reading {meta_mat} needs scipy (pip install scipy)") from exc
    try:
        synsets = loadmat(str(meta_mat), squeeze_me=True)["synsets"]
        rows = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), int(s["num_children"])) for s in synsets]
    except Exception as exc:  # noqa: BLE001 - any unreadable or foreign .mat file, in one line
        raise LabelledDataError(f"{meta_mat}: not the ILSVRC2012 devkit's meta.mat ({exc.__class__.__name__}: "
                          f"{str(exc)[:120]})") from None
    return {class_id: wnid for class_id, wnid, children in rows if children == 0}


def kaggle_synsets(solution: Path) -> dict[str, str]:
    """ImageId (ILSVRC2012_val_00000001) -> synset ID from Kaggle's LOC_val_solution.csv."""
    found: dict[str, str] = {}
    with open(solution, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row_no, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 2 or not row[1].split():
                raise LabelledDataError(f"{solution} line {row_no}: expected ImageId,PredictionString")
            found[row[0].strip()] = row[1].split()[0]
    return found
