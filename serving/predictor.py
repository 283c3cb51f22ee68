"""`Predictor`: an exported GLNet as an image classifier (or feature extractor) for apps.

Everything it needs comes from the artifact: the back-end from the file type, and the
input size, resize, crop, normalisation, layout, labels and output names from the
metadata the exporter stored in it. So an application needs no knowledge of GLNet:

    with Predictor("glnet_4g.onnx") as p:
        p.predict("cat.jpg").top[0].label        # or a PIL image, an H x W x 3 uint8 array, a list

One Predictor may be called from many threads at once. Runners that say they are
`thread_safe` are called directly (onnxruntime's `InferenceSession.run` is thread-safe;
the OpenVINO runner lends each concurrent call its own infer request from a pool);
anything else (TensorRT: one execution context and one stream) runs one request at a time
under a lock. A list of images runs through `Runner.infer_all_batched`: `max_batch` a call,
or exactly the batch of a fixed-batch artifact.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import numpy as np
from PIL import Image

from artifacts.errors import GlnetExportError
from artifacts.labels import labels_for
from artifacts.metadata import ArtifactMetadata
from artifacts.preprocess import ImageError, preprocess
from artifacts.preprocess import load_image as read_image
from runtimes.base import Runner
from serving.prediction import ClassScore, Prediction, softmax

ImageInput: TypeAlias = str | Path | Image.Image | np.ndarray
Outputs = dict[str, np.ndarray]


class PredictorError(GlnetExportError, ValueError):
    """The artifact cannot serve the request (no metadata, no logits for predict())."""


class Predictor:
    """Classify images with an exported artifact (.onnx, .xml, .engine); thread-safe.

    `min_side`: the smallest shorter image side accepted, default a quarter of the input
    size's shorter side (56 for 224): smaller images would be upscaled more than about 4x,
    and what the network then sees is mostly interpolation. `max_batch`: images per
    inference call when a list is given (a fixed-batch artifact uses its own batch).
    """

    def __init__(self, artifact: str | Path, device: str = "cpu", *, threads: int | None = None,
                 precision: str | None = None, top_k: int = 5, max_batch: int = 8,
                 min_side: int | None = None) -> None:
        from runtimes import load

        if top_k < 1 or max_batch < 1:
            raise PredictorError(f"top_k and max_batch must be >= 1, not {top_k} and {max_batch}")
        self.artifact = Path(artifact)
        self.runner: Runner = load(self.artifact, device=device, threads=threads, precision=precision)
        try:
            if self.runner.metadata is None:
                raise PredictorError(f"{artifact}: no glnet-export metadata, so its preprocessing is unknown "
                                     "(export it with glnet-export)")
            self.metadata: ArtifactMetadata = self.runner.metadata
            self.top_k = top_k
            self.min_side = min_side if min_side is not None else math.ceil(min(self.metadata.input_size) / 4)
            self.output_names = tuple(spec.name for spec in self.runner.outputs)
            self.labels = labels_for(self.metadata.labels, self.metadata.num_classes)
            self.max_batch = max_batch
            # One TensorRT execution context must not run two calls at once (the GPU would
            # serialise them anyway); onnxruntime's shared session and OpenVINO's request pool
            # are called directly.
            self._lock: contextlib.AbstractContextManager[Any] = (
                contextlib.nullcontext() if self.runner.thread_safe else threading.Lock())
        except BaseException:
            self.runner.close()
            raise

    # -- the public API -------------------------------------------------------------

    @property
    def task(self) -> str:
        return self.metadata.task

    @property
    def backend(self) -> str:
        return self.runner.name

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int | None = None
                ) -> Prediction | list[Prediction]:
        """Top-k classes of one image (a Prediction) or of a list of images (a list)."""
        logits_name = "logits" if "logits" in self.output_names else None
        if self.task != "classify" or logits_name is None:
            raise PredictorError(f"{self.artifact.name} outputs {', '.join(self.output_names)}, not class logits: "
                                 "use features() (or export without --features)")
        k = min(top_k or self.top_k, self.metadata.num_classes)
        single, items = _as_list(images)
        results = []
        for item, outputs in zip(items, self._run_images(items), strict=True):
            probs = softmax(outputs[logits_name].astype(np.float64))
            order = np.argsort(-probs, kind="stable")[:k]
            top = [ClassScore(int(i), self.labels[i], float(probs[i])) for i in order]
            results.append(Prediction(_describe(item), self.backend, top))
        return results[0] if single else results

    def features(self, images: ImageInput | Sequence[ImageInput]) -> Outputs | list[Outputs]:
        """Every output of the artifact by name (batch axis removed): one dict per image."""
        single, items = _as_list(images)
        results = self._run_images(items)
        return results[0] if single else results

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """The 1 x 3 x H x W float32 input the artifact takes for `image` (checked)."""
        return preprocess(self.load_image(image), self.metadata)

    def run(self, batch: np.ndarray) -> Outputs:
        """Raw inference on a preprocessed N x 3 x H x W float32 batch; every output by name."""
        with self._lock:
            return self.runner.infer_all(batch)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Predictor({str(self.artifact)!r}, {self.backend}, task={self.task})"

    # -- inputs ---------------------------------------------------------------------

    def load_image(self, image: ImageInput) -> Image.Image:
        """`image` as an RGB PIL image, checked (type, dtype, channels, readable, large enough)."""
        if isinstance(image, np.ndarray):
            _check_array(image)
        elif not isinstance(image, (str, Path, Image.Image)):
            raise ImageError(f"expected an image path, a PIL image or an H x W x 3 uint8 array, "
                             f"got {type(image).__name__}")
        img = read_image(image)
        if min(img.size) < self.min_side:
            h, w = self.metadata.input_size
            raise ImageError(f"{_describe(image)}: {img.width}x{img.height} is too small for this {h}x{w} model; "
                             f"its shorter side must be at least {self.min_side} pixels (smaller images would be "
                             "upscaled so much that the network sees mostly interpolation)")
        return img

    def _run_images(self, items: list[ImageInput]) -> list[Outputs]:
        batch = []
        for i, item in enumerate(items):  # every image is checked before anything runs
            try:
                batch.append(self.preprocess(item)[0])
            except ImageError as exc:
                raise ImageError(f"image {i + 1} of {len(items)}: {exc}" if len(items) > 1 else str(exc)) from None
        with self._lock:
            outputs = self.runner.infer_all_batched(np.stack(batch), self.max_batch)
        return [{name: out[j] for name, out in outputs.items()} for j in range(len(batch))]


def _as_list(images: ImageInput | Sequence[ImageInput]) -> tuple[bool, list[ImageInput]]:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("no images given")
        return False, list(images)
    return True, [images]  # type: ignore[list-item]


def _check_array(a: np.ndarray) -> None:
    """Say exactly what is wrong with an array, and how to make it right."""
    if a.ndim != 3 or a.shape[2] != 3:
        hint = " (drop alpha: a[..., :3])" if a.ndim == 3 and a.shape[2] == 4 else ""
        if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:
            hint = " (channels first: pass a.transpose(1, 2, 0))"
        raise ImageError(f"expected an H x W x 3 RGB array, got shape {a.shape}{hint}")
    if a.dtype != np.uint8:
        hint = " (from floats in 0..1: (a * 255).round().astype(np.uint8))" if a.dtype.kind == "f" else ""
        raise ImageError(f"expected uint8 pixels 0..255, got {a.dtype}{hint}")


def _describe(image: ImageInput) -> str:
    if isinstance(image, np.ndarray):
        return f"<array {'x'.join(map(str, image.shape))}>"
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "")
        return str(name) if name else f"<PIL image {image.width}x{image.height}>"
    return str(image)
