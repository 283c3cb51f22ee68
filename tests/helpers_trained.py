"""A GLNet with honestly trained weights, small and fast enough for tests.

Random weights say little about reduced precision: their logits are nearly flat, so a
top-1 "agreement" between fp32 and int8 is close to a coin toss either way. This trains
`glnet_tiny` (10 classes) on scikit-learn's digits (1797 labelled 8 x 8 images, shipped
inside the package, no download) for a few epochs at 32 x 32, in well under a minute on
two CPU cores, and keeps held-out digits for calibration and evaluation.

The digits are fed through `artifacts.preprocess.preprocess` exactly as an exported
artifact's metadata describes, so PNGs written from the held-out images and read back by
`--calib` (or by verification) are the same inputs the network was trained on.

`load_or_train` keeps the trained weights on disk, keyed by a hash of the code that
determines them, under a file lock: the pytest-xdist workers (and later runs) share one
training instead of each spending half a minute of a core on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import glnet
from artifacts.metadata import ArtifactMetadata
from artifacts.preprocess import preprocess
from glnet.model import GLNet

MODEL = "glnet_tiny"
SIZE = 32  # the smallest side GLNet takes; 4x cheaper than 64 and enough for digits
N_CALIB = 100  # held-out digits for int8 calibration
N_EVAL = 200  # further held-out digits, never seen by training or calibration


@dataclass
class TrainedDigits:
    model: GLNet
    train_accuracy: float
    eval_accuracy: float  # PyTorch fp32 on the eval digits
    seconds: float
    calib_images: np.ndarray  # N x 8 x 8 x 3 uint8, as written to PNG
    eval_images: np.ndarray
    eval_labels: np.ndarray
    checkpoint: Path | None = None  # the weights as a bare state dict (load_or_train), for --checkpoint

    def write_pngs(self, folder: Path, which: str = "calib") -> list[Path]:
        """The held-out digits as RGB PNGs in `folder` (created), in order."""
        folder.mkdir(parents=True, exist_ok=True)
        images = self.calib_images if which == "calib" else self.eval_images
        paths = []
        for i, img in enumerate(images):
            path = folder / f"{which}_{i:04d}.png"
            Image.fromarray(img, "RGB").save(path)
            paths.append(path)
        return paths


def digits_meta() -> ArtifactMetadata:
    """The preprocessing the digits model is trained with (the exporter's defaults at 32 x 32)."""
    return ArtifactMetadata(model=MODEL, num_classes=10, input_size=(SIZE, SIZE), labels="")


def _rgb_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # values 0..16 -> 0..255
    return np.repeat(gray[..., None], 3, axis=3), digits.target.astype(np.int64)


def _inputs(images: np.ndarray, meta: ArtifactMetadata) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([preprocess(img, meta) for img in images]))


def _split(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The digits in the seeded order, and where the held-out part starts."""
    images, labels = _rgb_digits()
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], labels[order], len(images) - N_CALIB - N_EVAL


def train_digits(epochs: int = 6, seed: int = 0) -> TrainedDigits:
    """Train glnet_tiny on the digits for `epochs` full epochs.

    Deliberately no time budget: training cut short on a busy machine would make the
    accuracy the tests assert depend on the load. The same seed gives the same weights.
    """
    torch.manual_seed(seed)
    images, labels, n_train = _split(seed)
    meta = digits_meta()
    x_train, y_train = _inputs(images[:n_train], meta), torch.from_numpy(labels[:n_train])

    model = glnet.create_model(MODEL, num_classes=10)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = epochs * ((n_train + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    # One thread: on two shared cores, torch's 2-thread sync makes small steps ~2.5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(model, opt, sched, x_train, y_train, epochs, gen)
    finally:
        torch.set_num_threads(threads)
    return _judged(model.eval(), seed, time.perf_counter() - start)


def _judged(model: GLNet, seed: int, seconds: float, checkpoint: Path | None = None) -> TrainedDigits:
    """The trained model with its data split and its accuracies, measured now."""
    images, labels, n_train = _split(seed)
    meta = digits_meta()
    calib = images[n_train : n_train + N_CALIB]
    eval_images, eval_labels = images[n_train + N_CALIB :], labels[n_train + N_CALIB :]
    with torch.inference_mode():
        train_acc = float((model(_inputs(images[:400], meta)).argmax(1).numpy() == labels[:400]).mean())
        eval_acc = float((model(_inputs(eval_images, meta)).argmax(1).numpy() == eval_labels).mean())
    return TrainedDigits(model, train_acc, eval_acc, seconds, calib, eval_images, eval_labels, checkpoint)


def training_key(epochs: int = 6, seed: int = 0) -> str:
    """A hash of everything the trained weights depend on: this file, the model's code, the
    preprocessing, torch's version and the settings. Any change retrains."""
    import artifacts.preprocess

    digest = hashlib.sha256(f"{torch.__version__} {epochs} {seed}".encode())
    sources = [Path(__file__), Path(artifacts.preprocess.__file__), *sorted(Path(glnet.__file__).parent.rglob("*.py"))]
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def load_or_train(cache: Path, epochs: int = 6, seed: int = 0) -> TrainedDigits:
    """The trained digits model, its weights read from `cache` when a run of the same code
    trained it before, else trained now and stored there (a bare state dict, loadable as
    a --checkpoint). A file lock lets one process train while the others wait for it."""
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    weights = cache / f"digits-{training_key(epochs, seed)}.pth"
    record = weights.with_suffix(".json")
    with open(cache / "digits.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not weights.is_file():
            trained = train_digits(epochs, seed)
            temp = weights.with_suffix(f".tmp{os.getpid()}")
            torch.save(trained.model.state_dict(), temp)
            record.write_text(json.dumps({"seconds": trained.seconds}))
            os.replace(temp, weights)  # complete or absent, never half a file
    model = glnet.create_model(MODEL, checkpoint=weights, num_classes=10)
    seconds = float(json.loads(record.read_text())["seconds"]) if record.is_file() else float("nan")
    return _judged(model, seed, seconds, weights)


def _train(model: GLNet, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
           x: torch.Tensor, y: torch.Tensor, epochs: int, gen: torch.Generator) -> None:
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


if __name__ == "__main__":
    result = train_digits()
    print(f"trained in {result.seconds:.1f} s: train acc {result.train_accuracy:.3f}, "
          f"eval acc {result.eval_accuracy:.3f}")
