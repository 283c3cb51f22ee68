"""`serving.Predictor`: images in, classes out, configured by the artifact alone.

One tiny classifier is exported per module; photographs are the real ones verification
uses. The threading test runs 8 threads x 50 calls against the single-threaded results.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import TINY_SIZE, shared_tiny
from PIL import Image

import glnet
from artifacts.labels import imagenet1k_labels
from artifacts.preprocess import ImageError
from export.onnx import OnnxExportOptions, export_onnx
from serving.prediction import Prediction
from serving.predictor import Predictor, PredictorError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "classify_folder.py"


@pytest.fixture(scope="module")
def tiny() -> glnet.GLNet:
    # A small input keeps 400 threaded calls to a few seconds on two cores; `shared_tiny` at
    # `TINY_SIZE` with a dynamic batch is also what test_onnx_export exports: the session
    # traces it once.
    return shared_tiny()


@pytest.fixture(scope="module")
def artifact(tiny: glnet.GLNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("predictor") / "tiny.onnx"
    export_onnx(tiny, path, OnnxExportOptions(dynamic="batch", input_size=(TINY_SIZE, TINY_SIZE)))
    return path


@pytest.fixture(scope="module")
def predictor(artifact: Path):  # type: ignore[no-untyped-def]
    with Predictor(artifact, threads=1) as p:
        yield p


@pytest.fixture(scope="module")
def small_arrays(photos: list[Path]) -> list[np.ndarray]:
    """The photographs as uint8 arrays, shrunk so that preprocessing costs little."""
    arrays = []
    for path in photos:
        with Image.open(path) as file:
            img = file.convert("RGB")
        img.thumbnail((240, 240))
        arrays.append(np.asarray(img))
    return arrays


def _one(prediction: Prediction | list[Prediction]) -> Prediction:
    assert isinstance(prediction, Prediction)
    return prediction


def _check_top(prediction: Prediction, k: int) -> None:
    probs = [c.probability for c in prediction.top]
    assert len(prediction.top) == k
    assert probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 1 + 1e-9
    assert all(c.label == imagenet1k_labels()[c.index] for c in prediction.top)


def test_predict_takes_paths_pil_images_arrays_and_lists(predictor: Predictor, tiny: glnet.GLNet,
                                                         photos: list[Path]) -> None:
    by_path = predictor.predict(photos[0])
    assert isinstance(by_path, Prediction) and by_path.image == str(photos[0])
    _check_top(by_path, 5)
    with Image.open(photos[0]) as img:
        by_pil = predictor.predict(img, top_k=3)
        by_array = predictor.predict(np.asarray(img.convert("RGB")))
    assert isinstance(by_pil, Prediction) and isinstance(by_array, Prediction)
    _check_top(by_pil, 3)
    assert by_pil.top == by_path.top[:3] and by_array.top == by_path.top
    assert by_array.image.startswith("<array ")

    batch = predictor.predict(list(photos))
    assert isinstance(batch, list) and len(batch) == len(photos)
    single = [_one(predictor.predict(p)) for p in photos]
    for one, many in zip(single, batch, strict=True):
        assert [c.index for c in one.top] == [c.index for c in many.top]
        np.testing.assert_allclose([c.probability for c in one.top], [c.probability for c in many.top], atol=1e-6)

    # The probabilities are PyTorch's, preprocessing included.
    with torch.inference_mode():
        logits = tiny(torch.from_numpy(predictor.preprocess(photos[0]))).double()
    probs = torch.softmax(logits, -1)[0].numpy()
    np.testing.assert_allclose([c.probability for c in by_path.top], probs[[c.index for c in by_path.top]],
                               rtol=1e-4)


def test_features_gives_the_raw_outputs(predictor: Predictor, photos: list[Path]) -> None:
    out = predictor.features(photos[1])
    assert isinstance(out, dict) and list(out) == ["logits"] and out["logits"].shape == (1000,)
    many = predictor.features(photos[:2])
    assert isinstance(many, list) and len(many) == 2
    np.testing.assert_allclose(many[1]["logits"], out["logits"], rtol=1e-5, atol=1e-6)
    raw = predictor.run(predictor.preprocess(photos[1]))
    assert raw["logits"].shape == (1, 1000)


def test_a_fixed_batch_artifact_gets_its_own_batch(small_arrays: list[np.ndarray], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A list runs through the runner in calls of the artifact's fixed batch (the filler's
    outputs dropped), each image classified as it is alone; on a fake runner that says it
    is not thread-safe, as TensorRT's."""
    import runtimes
    from artifacts.metadata import ArtifactMetadata
    from runtimes.base import Runner, TensorSpec

    class FixedBatch(Runner):
        backend = "fake"

        def __init__(self) -> None:
            super().__init__()
            self.metadata = ArtifactMetadata(model="glnet_tiny", num_classes=10, input_size=(32, 32), labels="")
            self.inputs = [TensorSpec("input", (4, 3, 32, 32), "float32")]
            self.outputs = [TensorSpec("logits", (4, 10), "float32")]
            self.calls: list[int] = []

        def _infer(self, x: np.ndarray) -> np.ndarray:
            self.calls.append(len(x))
            return x.reshape(len(x), -1)[:, ::97][:, :10] * 3  # ten pixels: each image its own scores

    fake = FixedBatch()
    monkeypatch.setattr(runtimes, "load", lambda *_a, **_k: fake)
    with Predictor(tmp_path / "fixed.engine", max_batch=3) as predictor:
        images = (small_arrays * 3)[:5]
        together = predictor.predict(images, top_k=3)
        assert fake.calls == [4, 4]
        alone = [_one(predictor.predict(image, top_k=3)) for image in images]
    assert isinstance(together, list)
    for many, one in zip(together, alone, strict=True):
        assert [c.index for c in many.top] == [c.index for c in one.top]
        np.testing.assert_allclose([c.probability for c in many.top], [c.probability for c in one.top], rtol=1e-6)


def _hammer(predictor: Predictor, inputs: list[np.ndarray], threads: int = 8, calls: int = 50
            ) -> tuple[list[list[tuple[int, float]]], list[BaseException]]:
    """`threads` threads, released together, each making `calls` calls over the inputs."""
    results: list[list[tuple[int, float]]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(calls):
                p = predictor.predict(inputs[(t + i) % len(inputs)])
                assert isinstance(p, Prediction)
                results[t].append((p.top[0].index, p.top[0].probability))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return results, errors


def _expected(predictor: Predictor, inputs: list[np.ndarray], threads: int = 8, calls: int = 50
              ) -> list[list[tuple[int, float]]]:
    alone = []
    for x in inputs:
        p = predictor.predict(x)
        assert isinstance(p, Prediction)
        alone.append((p.top[0].index, p.top[0].probability))
    return [[alone[(t + i) % len(inputs)] for i in range(calls)] for t in range(threads)]


def test_eight_threads_get_the_single_threaded_results(artifact: Path, small_arrays: list[np.ndarray]) -> None:
    with Predictor(artifact) as predictor:
        expected = _expected(predictor, small_arrays)
        results, errors = _hammer(predictor, small_arrays)
    assert not errors, errors[:3]
    _assert_same(results, expected)


def _assert_same(results: list[list[tuple[int, float]]], expected: list[list[tuple[int, float]]]) -> None:
    # Same class, and the same probability to float rounding: concurrent calls may not
    # change what a call computes.
    for got, want in zip(results, expected, strict=True):
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-6)


def test_openvino_predictor_pools_requests_across_threads(artifact: Path, small_arrays: list[np.ndarray],
                                                          tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from export.openvino import convert_openvino

    xml = tmp_path / "tiny.xml"
    convert_openvino(artifact, xml)
    with Predictor(xml, precision="fp32") as ov, Predictor(artifact) as ort:
        expected = _expected(ov, small_arrays, calls=20)
        results, errors = _hammer(ov, small_arrays, calls=20)
        reference = ort.predict(small_arrays[0])
        first = ov.predict(small_arrays[0])
        # Requests are pooled per compiled input shape; the predictor only ever sends batch 1.
        pools = ov.runner.idle_requests()  # type: ignore[attr-defined]
    assert not errors, errors[:3]
    _assert_same(results, expected)
    assert len(pools) == 1 and 1 <= pools[0] <= 8, "at most one infer request per concurrent caller"
    assert isinstance(first, Prediction) and isinstance(reference, Prediction)
    assert [c.index for c in first.top] == [c.index for c in reference.top]


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: np.random.default_rng(0).random((200, 200, 3)), "uint8 pixels.*float64.*astype"),
    (lambda tmp: np.zeros((200, 200, 4), np.uint8), r"H x W x 3.*\(200, 200, 4\).*drop alpha"),
    (lambda tmp: np.zeros((3, 200, 200), np.uint8), "channels first"),
    (lambda tmp: _write(tmp / "broken.jpg", b"not a jpeg"), "not a readable image"),
    (lambda tmp: tmp / "missing.png", "no such file"),
    (lambda tmp: Image.new("RGB", (300, 15)), "15 is too small.*at least 16 pixels"),
    (lambda tmp: 42, "got int"),
], ids=["float-array", "4-channels", "channels-first", "unreadable", "missing", "too-small", "not-an-image"])
def test_bad_input_is_one_clear_error_and_the_predictor_goes_on(make, message: str, predictor: Predictor,  # type: ignore[no-untyped-def]
                                                                photos: list[Path], tmp_path: Path) -> None:
    before = predictor.predict(photos[0])
    bad = make(tmp_path)
    with pytest.raises(ImageError, match=message):
        predictor.predict(bad)
    with pytest.raises(ImageError, match="^image 2 of 2: "):
        predictor.predict([photos[0], bad])
    assert predictor.predict(photos[0]) == before


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_the_smallest_accepted_image_is_a_quarter_of_the_input(predictor: Predictor) -> None:
    assert predictor.min_side == TINY_SIZE // 4
    assert isinstance(predictor.predict(Image.new("RGB", (TINY_SIZE // 4, 90), (200, 30, 30))), Prediction)


def test_an_artifact_without_metadata_is_refused(artifact: Path, tmp_path: Path) -> None:
    proto = onnx.load(artifact)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    with pytest.raises(PredictorError, match="no glnet-export metadata"):
        Predictor(bare)


def test_example_app_classifies_a_folder(artifact: Path, photos: list[Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for p in photos[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"\x00" * 100)
    (folder / "notes.txt").write_text("not an image, not even looked at")
    spec = importlib.util.spec_from_file_location("classify_folder", EXAMPLE)
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    table = tmp_path / "top.csv"
    assert app.main([str(artifact), str(folder), "--top-k", "2", "--workers", "3", "--csv", str(table)]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == sorted(p.name for p in photos[:3])
    assert "broken.jpg: skipped: " in err and "classified 3 of 4 images" in err
    assert len(table.read_text().splitlines()) == 1 + 3 * 2
    assert app.main([str(artifact), str(tmp_path / "nowhere")]) == 1
