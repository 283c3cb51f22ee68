"""`Runner.infer_batched` / `infer_all_batched`: any number of images on a fixed- or
dynamic-batch artifact, on a fake runner whose outputs depend on each image alone (so a
wrong split, a filler image kept or images out of order shows)."""

from __future__ import annotations

import numpy as np
import pytest

from runtimes.base import Dim, Runner, RuntimeInputError, TensorSpec


class Pixels(Runner):
    """Two outputs per image: its first ten pixels tripled, and the image's mean."""

    backend = "fake"

    def __init__(self, batch: Dim) -> None:
        super().__init__()
        self.inputs = [TensorSpec("input", (batch, 3, 8, 8), "float32")]
        self.outputs = [TensorSpec("logits", (batch, 10), "float32"), TensorSpec("mean", (batch,), "float32")]
        self.calls: list[np.ndarray] = []

    def _infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append(x.copy())
        return {"logits": x.reshape(len(x), -1)[:, :10] * 3, "mean": x.mean(axis=(1, 2, 3))}

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self._infer_all(x)["logits"]


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _expected(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"logits": x.reshape(len(x), -1)[:, :10] * 3, "mean": x.mean(axis=(1, 2, 3))}


def test_a_fixed_batch_gets_exactly_its_batch_the_last_filled_with_the_last_image() -> None:
    x, runner = _images(10), Pixels(4)
    outputs = runner.infer_all_batched(x, max_batch=3)  # a fixed batch wins over max_batch
    assert [len(c) for c in runner.calls] == [4, 4, 4]
    np.testing.assert_array_equal(runner.calls[-1], np.concatenate([x[8:], x[9:], x[9:]]))
    assert list(outputs) == ["logits", "mean"]
    for name, want in _expected(x).items():
        np.testing.assert_allclose(outputs[name], want, rtol=1e-6)  # the filler's outputs dropped
    np.testing.assert_allclose(Pixels(4).infer_batched(x), _expected(x)["logits"], rtol=1e-6)


@pytest.mark.parametrize(("max_batch", "calls"), [(None, [7]), (3, [3, 3, 1]), (7, [7]), (9, [7])])
def test_a_dynamic_batch_runs_at_most_max_batch_a_call(max_batch: int | None, calls: list[int]) -> None:
    x, runner = _images(7), Pixels("batch")
    np.testing.assert_allclose(runner.infer_batched(x, max_batch), _expected(x)["logits"], rtol=1e-6)
    assert [len(c) for c in runner.calls] == calls


def test_bad_input_is_one_clear_error() -> None:
    runner = Pixels(4)
    with pytest.raises(RuntimeInputError, match="no images"):
        runner.infer_batched(np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(RuntimeInputError, match="max_batch must be >= 1"):
        Pixels("batch").infer_batched(_images(2), 0)
    with pytest.raises(RuntimeInputError, match="float32"):
        runner.infer_batched(_images(2).astype(np.float64))
    with pytest.raises(RuntimeInputError, match="fixed size 8 on axis 2"):  # the per-call checks still hold
        runner.infer_batched(np.zeros((2, 3, 9, 8), np.float32))
    assert runner.calls == []
