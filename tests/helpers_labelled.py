"""Labelled images on disk in every layout `artifacts.labelled.read_labelled` reads, written
from a set of images and their digit classes (the trained digits model's held-out part).

Digit d is class d everywhere: folder `d`, folder `class_d` (the names an artifact without
ImageNet labels has: "class 0" ...), and ImageNet's d-th synset (n01440764 for 0, as the
first 10 classes of the sorted synset list) where a layout needs synsets. The ILSVRC2012
layouts get a devkit meta.mat written the way the real one is laid out, with the class IDs
shuffled (as in the real devkit, ILSVRC2012_ID order is not the sorted-synset order), so a
reader that took the IDs for class indices would score about 10%, not the model's accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from artifacts.labels import imagenet1k_synsets


@dataclass(frozen=True)
class LabelledFolder:
    data: Path
    labels: Path | None = None  # the --labels file, where the layout has one


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(path, format="PNG")  # lossless even when named .JPEG
    return path


def write_layouts(images: np.ndarray, labels: np.ndarray, root: Path, seed: int = 0) -> dict[str, LabelledFolder]:
    """`images` (N x H x W x 3 uint8) with `labels` (digits 0-9) under `root`, once per layout."""
    synsets = imagenet1k_synsets()
    layouts: dict[str, LabelledFolder] = {}
    for layout, folder_name in (("synset-folders", lambda d: synsets[d]), ("index-folders", str),
                                ("name-folders", lambda d: f"class_{d}")):
        data = root / layout
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            write_png(data / folder_name(int(label)) / f"digit_{i:04d}.png", image)
        layouts[layout] = LabelledFolder(data)

    csv_root = root / "labels-file"
    rows = ["path,label"]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        write_png(csv_root / "images" / f"digit_{i:04d}.png", image)
        # Every kind of label a CSV may hold: synsets, indices and names, in turn.
        rows.append(f"images/digit_{i:04d}.png,{(synsets[label], str(label), f'class {label}')[i % 3]}")
    (csv_root / "labels.csv").write_text("\n".join(rows) + "\n")
    layouts["labels-file"] = LabelledFolder(csv_root, csv_root / "labels.csv")

    # ILSVRC2012: a flat folder numbered in a shuffled order, ground truth in devkit IDs.
    rng = np.random.default_rng(seed)
    val = root / "ilsvrc" / "ILSVRC2012_img_val"
    numbers = rng.permutation(len(images)) + 1
    ids = rng.permutation(1000) + 1  # ids[k]: the ILSVRC2012_ID of sorted class k
    truth: dict[int, int] = {}
    for number, image, label in zip(numbers, images, labels, strict=True):
        write_png(val / f"ILSVRC2012_val_{number:08d}.JPEG", image)
        truth[int(number)] = int(label)
    devkit = root / "ilsvrc" / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    ground_truth = devkit / "ILSVRC2012_validation_ground_truth.txt"
    ground_truth.write_text("".join(f"{ids[truth[n]]}\n" for n in sorted(truth)))
    write_meta_mat(devkit / "meta.mat", ids)
    layouts["ilsvrc-devkit"] = LabelledFolder(val, ground_truth)
    solution = root / "ilsvrc" / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{n:08d},{synsets[truth[n]]} 10 12 30 40 {synsets[truth[n]]} 1 2 3 4\n"
        for n in sorted(truth)))
    layouts["ilsvrc-kaggle"] = LabelledFolder(val, solution)
    return layouts


def write_meta_mat(path: Path, ids: np.ndarray) -> None:
    """A devkit meta.mat: struct array `synsets` with the real file's fields, the 1000 leaf
    classes (num_children 0) with ILSVRC2012_ID ids[k] for sorted synset k, then WordNet
    inner nodes (IDs above 1000, with children), which a reader must leave out."""
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    synsets = imagenet1k_synsets()
    leaves = sorted((int(ids[k]), synsets[k]) for k in range(1000))
    inner = [(1001, "n00001740", 2), (1002, "n00002137", 3)]
    table = np.zeros((len(leaves) + len(inner), 1), dtype=[(f, "O") for f in fields])
    for row, (class_id, wnid) in enumerate(leaves):
        table[row, 0] = (class_id, wnid, f"class {class_id}", "", 0, np.zeros((1, 0)), 0, 1300)
    for row, (class_id, wnid, children) in enumerate(inner, len(leaves)):
        table[row, 0] = (class_id, wnid, "entity", "", children, np.arange(1, children + 1), 5, 0)
    savemat(str(path), {"synsets": table})
