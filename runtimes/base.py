"""The one inference interface every back-end implements.

`Runner` owns the public surface and the checks that are the same everywhere (input
rank, dtype, channels, static dimensions, use after close); back-ends implement
`_infer` and `_close` only, so a new back-end is one small module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import numpy as np

from artifacts.errors import GlnetExportError
from artifacts.metadata import ArtifactMetadata

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


_R = TypeVar("_R", bound="Runner")


class RuntimeInputError(GlnetExportError, ValueError):
    """An input array the artifact cannot take."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.shape) if not isinstance(d, int))


class Runner(ABC):
    """A loaded artifact that maps a N x 3 x H x W float32 array to its output."""

    backend: str = "base"
    # True when `infer`/`infer_all` may be called from several threads at once; otherwise
    # callers serialise (the Predictor wraps such runners in a lock).
    thread_safe: bool = False

    def __init__(self) -> None:
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.precision: str = "fp32"  # the precision that actually runs, not the one asked for
        self.device: str = "cpu"
        self.metadata: ArtifactMetadata | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return f"{self.backend} ({self.device}, {self.precision})"

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeInputError(f"{self.backend} runner is closed")
        self._check_input(x)
        return self._infer(np.ascontiguousarray(x))

    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name, in the artifact's order (feature artifacts have several)."""
        if self._closed:
            raise RuntimeInputError(f"{self.backend} runner is closed")
        self._check_input(x)
        return self._infer_all(np.ascontiguousarray(x))

    def infer_batched(self, x: np.ndarray, max_batch: int | None = None) -> np.ndarray:
        """`infer` on any number of images (`_batches` says how they are split)."""
        parts = [self.infer(chunk)[:n] for chunk, n in self._batches(x, max_batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def infer_all_batched(self, x: np.ndarray, max_batch: int | None = None) -> dict[str, np.ndarray]:
        """`infer_all` on any number of images (`_batches` says how they are split)."""
        parts = [{name: out[:n] for name, out in self.infer_all(chunk).items()}
                 for chunk, n in self._batches(x, max_batch)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def prepare(self, shape: tuple[int, ...]) -> None:  # noqa: B027 - most back-ends have nothing to do
        """Do the one-time work for inputs of `shape` now (OpenVINO compiles each shape, TensorRT
        with CUDA graphs captures each shape's graph), so that the first call at that shape, a
        benchmark's cold run say, does not include it."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self: _R) -> _R:  # `with OpenVinoRunner(...) as r`: r keeps its own attributes
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _batches(self, x: np.ndarray, max_batch: int | None) -> Iterator[tuple[np.ndarray, int]]:
        """`x` in calls the artifact takes, each with how many of its images are real: a
        fixed-batch artifact gets exactly its batch, the last call filled up with copies of
        the last image (their outputs are dropped); a dynamic one at most `max_batch` a call
        (None: all at once)."""
        self._check_array(x)
        if len(x) == 0:
            raise RuntimeInputError(f"no images to run (input shape {x.shape})")
        if max_batch is not None and max_batch < 1:
            raise RuntimeInputError(f"max_batch must be >= 1, not {max_batch}")
        fixed = self.inputs[0].shape[0] if self.inputs else None
        size = fixed if isinstance(fixed, int) else max_batch or len(x)
        for start in range(0, len(x), size):
            chunk = x[start:start + size]
            n = len(chunk)
            if isinstance(fixed, int) and n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
            yield chunk, n

    def _check_array(self, x: np.ndarray) -> None:
        """What every artifact asks of an input: a float32 N x 3 x H x W numpy array."""
        if not isinstance(x, np.ndarray):
            raise RuntimeInputError(f"expected a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise RuntimeInputError(f"expected float32 input, got {x.dtype}")
        if x.ndim != 4:
            raise RuntimeInputError(f"expected a 4-D N x 3 x H x W input, got shape {x.shape}")
        if x.shape[1] != 3:
            raise RuntimeInputError(f"expected 3 channels (RGB) on axis 1, got shape {x.shape}")

    def _check_input(self, x: np.ndarray) -> None:
        self._check_array(x)
        if self.inputs:
            spec = self.inputs[0]
            for axis, (want, got) in enumerate(zip(spec.shape, x.shape, strict=False)):
                if isinstance(want, int) and want != got:
                    raise RuntimeInputError(
                        f"input {spec.name!r} has a fixed size {want} on axis {axis}, got shape {x.shape}"
                    )

    @abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray: ...

    def _infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # Right for single-output artifacts; back-ends override it to return every output.
        return {self.outputs[0].name if self.outputs else "output": self._infer(x)}

    def _close(self) -> None:  # noqa: B027 - back-ends override when they hold resources
        pass
