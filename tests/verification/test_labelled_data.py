"""Labelled data and scoring without a model: every layout `read_labelled` reads gives the
same images the same classes, the ILSVRC2012 devkit IDs go through meta.mat, --limit is
balanced and seeded, bad input is one clear error, unreadable images are skipped and
listed, and the intervals give the published numbers."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_labelled import LabelledFolder, write_layouts, write_png
from PIL import Image

from artifacts.labelled import LabelledDataError, balanced_sample, iter_batches, read_labelled
from artifacts.labels import imagenet1k_synset_index, imagenet1k_synsets, labels_for
from artifacts.metadata import ArtifactMetadata
from artifacts.scoring import accuracy, hits_at, newcombe_paired, paired_change, top_k, wilson

TEN = labels_for("", 10)  # "class 0" ... "class 9": an artifact without ImageNet labels
META = ArtifactMetadata(model="glnet_tiny", num_classes=10, input_size=(32, 32), labels="")


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), np.arange(40) % 10


@pytest.fixture(scope="module")
def layouts(images: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, LabelledFolder]:
    return write_layouts(*images, tmp_path_factory.mktemp("layouts"))


def test_the_synset_index_is_built_once_and_matches_the_class_order() -> None:
    index = imagenet1k_synset_index()
    assert index is imagenet1k_synset_index()  # cached: one mapping, not one per image resolved
    assert len(index) == 1000 and index["n01440764"] == 0
    assert all(index[synset] == i for i, synset in enumerate(imagenet1k_synsets()))
    with pytest.raises(TypeError):
        index["n01440764"] = 1  # type: ignore[index]  # shared, so read-only


def _pixels(path: Path) -> str:
    with Image.open(path) as img:
        return hashlib.sha1(np.asarray(img.convert("RGB")).tobytes()).hexdigest()


@pytest.mark.parametrize("layout", ["synset-folders", "index-folders", "name-folders", "labels-file",
                                    "ilsvrc-devkit", "ilsvrc-kaggle"])
def test_every_layout_gives_each_image_its_class(layout: str, layouts: dict[str, LabelledFolder],
                                                 images: tuple[np.ndarray, np.ndarray]) -> None:
    truth = {hashlib.sha1(img.tobytes()).hexdigest(): int(label) for img, label in zip(*images, strict=True)}
    found = read_labelled(layouts[layout].data, layouts[layout].labels, TEN)
    assert found.layout == layout and len(found) == found.found == 40 and found.classes == 10
    assert {_pixels(p): int(label) for p, label in zip(found.paths, found.labels, strict=True)} == truth


def test_devkit_ids_are_not_class_indices(layouts: dict[str, LabelledFolder]) -> None:
    """The devkit numbers classes in its own order: read through meta.mat the labels are the
    digits; the common mistake, ID - 1, would give other classes for nearly every image."""
    spec = layouts["ilsvrc-devkit"]
    found = read_labelled(spec.data, spec.labels, TEN)
    ids = [int(line) for line in spec.labels.read_text().split()]  # type: ignore[union-attr]
    numbers = [int(p.stem.rsplit("_", 1)[1]) for p in found.paths]
    assert np.mean([ids[n - 1] - 1 == label for n, label in zip(numbers, found.labels, strict=True)]) < 0.2
    imagenet = read_labelled(spec.data, spec.labels)  # no class names given: ImageNet's
    assert imagenet.class_names[0] == "tench" and list(imagenet.labels) == list(found.labels)


def test_devkit_ground_truth_without_meta_mat_says_what_to_add(layouts: dict[str, LabelledFolder],
                                                              tmp_path: Path) -> None:
    lone = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    shutil.copy(layouts["ilsvrc-devkit"].labels, lone)  # type: ignore[arg-type]
    with pytest.raises(LabelledDataError, match="meta.mat .*LOC_val_solution.csv"):
        read_labelled(layouts["ilsvrc-devkit"].data, lone, TEN)


def test_a_flat_ilsvrc_folder_finds_its_ground_truth_inside(layouts: dict[str, LabelledFolder],
                                                           tmp_path: Path) -> None:
    data = tmp_path / "val"
    shutil.copytree(layouts["ilsvrc-kaggle"].data, data)
    with pytest.raises(LabelledDataError, match="no labels"):
        read_labelled(data, None, TEN)
    shutil.copy(layouts["ilsvrc-kaggle"].labels, data)  # type: ignore[arg-type]
    assert read_labelled(data, None, TEN).layout == "ilsvrc-kaggle"


def test_limit_is_class_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(5), [50, 30, 7, 2, 11])
    for limit in (5, 10, 13):
        counts = np.bincount(labels[balanced_sample(labels, limit, seed=1)], minlength=5)
        assert counts.sum() == limit and counts.max() - counts.min() <= 1, counts
    # Class 3 runs out after 2: the others share the rest evenly.
    counts = np.bincount(labels[balanced_sample(labels, 30, seed=1)], minlength=5)
    assert counts[3] == 2 and sorted(counts[[0, 1, 2, 4]]) == [7, 7, 7, 7]
    assert list(balanced_sample(labels, 13, seed=1)) == list(balanced_sample(labels, 13, seed=1))
    assert list(balanced_sample(labels, 13, seed=1)) != list(balanced_sample(labels, 13, seed=2))
    assert len(set(balanced_sample(labels, 100, seed=0))) == 100  # all, each once


def test_limit_reads_a_balanced_sample(layouts: dict[str, LabelledFolder]) -> None:
    found = read_labelled(layouts["index-folders"].data, None, TEN, limit=15, seed=3)
    assert len(found) == 15 and found.found == 40 and "sample of 15 (seed 3)" in found.source
    assert sorted(found.counts().values()) == [1] * 5 + [2] * 5
    again = read_labelled(layouts["index-folders"].data, None, TEN, limit=15, seed=3)
    assert again.paths == found.paths


def _folders(root: Path, names: list[str], image: np.ndarray | None = None) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        if image is not None:
            write_png(root / name / "a.png", image)
    return root


@pytest.mark.parametrize(("names", "class_names", "message"), [
    (["0", "1", "tree"], TEN, "more than one way"),
    (["cat", "dog"], TEN, r"unknown class 'cat'.*\(and 1 more"),
    (["n99999999"], TEN, "not one of the 1000 ImageNet-1k synsets"),
    (["12"], TEN, "class 12 .*the artifact has 10 classes"),
    (["crane"], labels_for("imagenet-1k", 1000), "ambiguous .*134, 517"),
    (["tench"], None, "no class names are known"),
])
def test_bad_class_folders_are_one_clear_error(names: list[str], class_names: tuple[str, ...] | None, message: str,
                                               tmp_path: Path) -> None:
    data = _folders(tmp_path / "data", names, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(LabelledDataError, match=message):
        read_labelled(data, None, class_names)


def test_class_names_match_without_case_or_underscores(tmp_path: Path) -> None:
    data = _folders(tmp_path / "data", ["Kit_Fox", "tench"], np.zeros((8, 8, 3), np.uint8))
    found = read_labelled(data, None, labels_for("imagenet-1k", 1000))
    assert found.layout == "name-folders" and sorted(found.labels) == [0, 278]


def test_missing_empty_and_unlabelled_data_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LabelledDataError, match="does not exist"):
        read_labelled(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelledDataError, match="holds no images"):
        read_labelled(tmp_path / "empty")
    with pytest.raises(LabelledDataError, match="hold no images"):
        read_labelled(_folders(tmp_path / "empty_classes", ["0", "1"]))
    flat = tmp_path / "flat"
    write_png(flat / "x.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(LabelledDataError, match="no labels"):
        read_labelled(flat)
    _folders(flat, ["0"], np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(LabelledDataError, match="beside 1 class folders"):
        read_labelled(flat)
    with pytest.raises(LabelledDataError, match="--labels .*does not exist"):
        read_labelled(flat, tmp_path / "labels.csv")
    with pytest.raises(LabelledDataError, match="--limit must be >= 1"):
        read_labelled(flat, limit=0)


def test_labels_file_errors_name_the_line_and_missing_files_are_listed(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,3\nb.png,4\n")
    found = read_labelled(tmp_path, labels, TEN)
    assert len(found) == 1 and found.found == 2 and [u.reason for u in found.unreadable] == ["no such file"]
    labels.write_text("a.png,3\na.png,zebra\n")
    with pytest.raises(LabelledDataError, match="labels.csv line 2: unknown class 'zebra'"):
        read_labelled(tmp_path, labels, TEN)
    labels.write_text("b.png,3\n")
    with pytest.raises(LabelledDataError, match="none of the 1 images"):
        read_labelled(tmp_path, labels, TEN)
    labels.write_text("a.png 7\n")  # Caffe's val.txt form
    assert list(read_labelled(tmp_path, labels, TEN).labels) == [7]


def test_unreadable_images_are_skipped_counted_and_listed_once(layouts: dict[str, LabelledFolder],
                                                               tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(layouts["index-folders"].data, data)
    (data / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (data / "4" / "empty.jpg").write_bytes(b"")
    found = read_labelled(data, None, TEN)
    assert len(found) == 42
    batches = list(iter_batches(found, META, batch_size=16, threads=2))
    assert [len(b.labels) for b in batches] == [16, 16, 8]
    assert sorted(u.path.name for u in found.unreadable) == ["broken.png", "empty.jpg"]
    for b in batches:
        assert b.images.shape[1:] == (3, 32, 32) and b.images.dtype == np.float32
        assert list(b.labels) == [found.labels[i] for i in b.positions]
        assert all(found.paths[i].name not in ("broken.png", "empty.jpg") for i in b.positions)
    list(iter_batches(found, META, batch_size=7, threads=1))  # a second pass lists nothing twice
    assert len(found.unreadable) == 2


def test_wilson_interval_gives_the_published_numbers() -> None:
    p = wilson(13, 16)  # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables, ch. 2
    assert (round(p.low, 4), round(p.high, 4)) == (0.5699, 0.9341) and p.value == 0.8125
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0 and 0.69 < wilson(10, 10).low < 0.73
    assert wilson(0, 0).n == 0 and wilson(0, 0).value != wilson(0, 0).value  # NaN: nothing measured
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_paired_change_gives_the_published_numbers_and_is_not_zero_width() -> None:
    # A paired 2 x 2 table (both, only first, only second, neither) whose Newcombe interval the
    # same book reports: -0.0621 (-0.1186 to -0.0046).
    low, high = newcombe_paired(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    cand = np.array([True] * 59 + [True] * 6 + [False] * 16 + [False] * 80)
    ref = np.array([True] * 59 + [False] * 6 + [True] * 16 + [False] * 80)
    change = paired_change(cand, ref)
    assert (change.gained, change.lost, round(change.change, 4)) == (6, 16, -0.0621)
    assert (change.low, change.high) == (low, high)
    # Identical per-image results (an fp32 file): change 0, yet not a zero-width interval;
    # more images, a narrower one.
    same = paired_change(cand, cand)
    assert same.change == 0 and same.low < 0 < same.high
    assert paired_change(np.tile(cand, 10), np.tile(cand, 10)).high < same.high


def test_top_k_and_hits() -> None:
    logits = np.array([[0.1, 0.5, 0.5, 0.2], [3.0, 2.0, 1.0, 0.0]], np.float32)
    top = top_k(logits, 5)  # more than the classes: all of them
    assert top.tolist() == [[1, 2, 3, 0], [0, 1, 2, 3]]  # a tie goes to the lower index
    labels = np.array([2, 0])
    assert hits_at(top, labels, 1).tolist() == [False, True] and hits_at(top, labels, 2).tolist() == [True, True]
    assert accuracy(hits_at(top, labels, 1)).hits == 1


def test_a_fixed_batch_runner_gets_its_own_batch_size(layouts: dict[str, LabelledFolder]) -> None:
    """A file exported with a fixed batch (TensorRT engines, --dynamic none) is fed exactly that
    many images per call, the last call filled up; its scores are those of a dynamic runner."""
    from runtimes.base import Runner, TensorSpec
    from verification.accuracy import AccuracyOptions, score_runners

    class Pixels(Runner):  # ten "logits" from the pixels, so each image scores its own way
        backend = "fake"

        def __init__(self, batch: int | str) -> None:
            super().__init__()
            self.inputs = [TensorSpec("input", (batch, 3, 32, 32), "float32")]
            self.calls: list[int] = []

        def _infer(self, x: np.ndarray) -> np.ndarray:
            self.calls.append(len(x))
            return x.reshape(len(x), -1)[:, :10] * 3

    fixed, dynamic = Pixels(4), Pixels("batch")
    found = read_labelled(layouts["index-folders"].data, None, TEN, limit=10)
    rows = score_runners([("dynamic", dynamic), ("fixed", fixed)], found, META, "dynamic", AccuracyOptions(batch=7))
    assert fixed.calls == [4, 4, 4] and dynamic.calls == [7, 3]
    assert rows[1].top1 == rows[0].top1 and rows[1].agreement_with_pytorch is not None
    assert rows[1].agreement_with_pytorch.hits == 10
