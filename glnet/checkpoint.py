"""Load GLNet checkpoints safely (`weights_only`) and strictly, with one-line errors.

Layouts read: the authors' `{'model': sd}` (glnet_16g adds `model_ema`), `{'state_dict': sd}`,
`{'model_ema': sd}`, or a bare state dict; a `module.` prefix is stripped.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import get_config, list_models
from .model import GLNet

Layout = dict[str, tuple[int, ...]]  # state-dict key -> tensor shape

_PREFIX = "module."  # what DistributedDataParallel puts before every key
_SOURCES = ("model", "state_dict", "model_ema")  # looked up in this order when use_ema is False
_HEAD = ("head.weight", "head.bias")
_SHOW = 3  # names listed per kind of mismatch; the count says how many there are
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 is a zip archive


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded. The message is always one line."""

    def __init__(self, message: str) -> None:
        # Collapse any newline a torch message or a key name could bring in, so that a CLI
        # can print `Error: <message>` as one line.
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What `load_checkpoint` loaded: enough to record provenance in exported artifacts."""

    path: Path
    sha256: str
    source: str  # "model", "model_ema", "state_dict", or "<root>" for a bare state dict
    stripped_prefix: bool  # the keys had a `module.` prefix
    num_tensors: int


def checkpoint_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so a multi-GB checkpoint is never held whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _names(items: Iterable[str], limit: int = _SHOW) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _explain_load_failure(path: Path, err: Exception) -> str:
    """Turn whatever torch.load raised into what is wrong with the file."""
    where = f"checkpoint {path}"
    if isinstance(err, OSError):
        return f"{where} cannot be read: {err.strerror or err}"
    text = str(err)
    refused = (
        f"{where} refused: the file contains Python code/objects that are not plain tensors, loading it could run code"
    )
    # The weights-only unpickler names the first global it would not import.
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(err, pickle.UnpicklingError) and found:
        return f"{refused} (it references {found.group(1)}); if you trust its source, re-save just the state dict"
    with open(path, "rb") as f:
        magic = f.read(len(_ZIP_MAGIC))
    if magic == _ZIP_MAGIC:
        # A zip's directory sits at its very end, so any file cut short has lost it.
        if not zipfile.is_zipfile(path):
            return f"{where} is truncated: the zip archive has no end record (an interrupted download or copy?)"
        if isinstance(err, pickle.UnpicklingError):
            return refused
        return f"{where} is damaged: {text.splitlines()[0] if text else type(err).__name__}"
    # The pre-1.6 format is a bare pickle stream: truncation shows up as an early end of data.
    if isinstance(err, EOFError) or "unexpected EOF" in text:
        return f"{where} is truncated: the data ends early (an interrupted download or copy?)"
    return f"{where} is not a PyTorch checkpoint (neither a torch.save zip archive nor a tensor pickle)"


def _load_file(path: Path) -> object:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is an empty file (0 bytes)")
    try:
        # weights_only: only tensors and plain containers are rebuilt, so no file can run code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files; all become one message
        raise CheckpointError(_explain_load_failure(path, err)) from err


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _pick_state_dict(ckpt: object, use_ema: bool, where: str) -> tuple[Mapping[str, Tensor], str]:
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{where} holds a {type(ckpt).__name__}, not a dict of weights")
    top_keys = _names((repr(k) for k in ckpt), limit=8)
    if use_ema and "model_ema" not in ckpt:
        raise CheckpointError(
            f"{where} has no EMA weights: no 'model_ema' among its top-level keys ({top_keys}); load it without use_ema"
        )
    for key in ("model_ema",) if use_ema else _SOURCES:
        if key in ckpt:
            if not _is_state_dict(ckpt[key]):
                raise CheckpointError(f"{where}: {key!r} is not a state dict (a non-empty dict of named tensors)")
            return ckpt[key], key
    if _is_state_dict(ckpt):
        return ckpt, "<root>"
    raise CheckpointError(
        f"{where} holds no state dict: top-level keys are {top_keys}; expected 'model', 'state_dict', "
        "'model_ema' or the weights themselves"
    )


def read_state_dict(path: str | Path, use_ema: bool = False) -> tuple[dict[str, Tensor], str, bool]:
    """Read a checkpoint's weights without a model: (state_dict, source key, stripped_prefix)."""
    path = Path(path)
    ckpt = _load_file(path)
    state_dict, source = _pick_state_dict(ckpt, use_ema, f"checkpoint {path}")
    if all(k.startswith(_PREFIX) for k in state_dict):
        return {k[len(_PREFIX) :]: v for k, v in state_dict.items()}, source, True
    return dict(state_dict), source, False


def _layout(state_dict: Mapping[str, Tensor]) -> Layout:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@cache
def _variant_layout(name: str) -> Layout:
    # Built on the meta device: shapes without storage, so even glnet_16g costs no memory.
    with torch.device("meta"):
        model = GLNet(get_config(name))
    return _layout(model.state_dict())


def _diff(expected: Layout, found: Layout) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [k for k in expected if k in found and found[k] != expected[k]]
    return missing, unexpected, misshaped


def _head_classes(found: Layout, expected: Layout) -> int | None:
    """Classes of `found`'s head if it is a valid head for `expected`'s features, else None."""
    weight, bias = found.get("head.weight"), found.get("head.bias")
    if weight is None or bias is None or len(weight) != 2 or weight[1] != expected["head.weight"][1]:
        return None
    return weight[0] if bias == (weight[0],) else None


def _detect(found: Layout) -> tuple[str, int] | None:
    for name in list_models():
        expected = _variant_layout(name)
        missing, unexpected, misshaped = _diff(expected, found)
        # The number of classes is the fine-tuner's choice, not part of the architecture.
        if not missing and not unexpected and set(misshaped) <= set(_HEAD):
            classes = _head_classes(found, expected)
            if classes is not None:
                return name, classes
    return None


def detect_variant(state_dict: Mapping[str, Tensor]) -> str | None:
    """The registered variant whose layout `state_dict` has (any number of classes), or None."""
    match = _detect(_layout(state_dict))
    return match[0] if match else None


def _check_fits(model: nn.Module, state_dict: Mapping[str, Tensor], path: Path) -> None:
    """Raise CheckpointError naming every kind of mismatch, before the model is touched."""
    expected, found = _layout(model.state_dict()), _layout(state_dict)
    missing, unexpected, misshaped = _diff(expected, found)
    if not (missing or unexpected or misshaped):
        return
    name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
    where = f"checkpoint {path} does not fit {name}"
    if not missing and not unexpected and set(misshaped) <= set(_HEAD) and "head.weight" in expected:
        classes = _head_classes(found, expected)
        if classes is not None:
            built = expected["head.weight"][0]
            raise CheckpointError(
                f"{where}: head has {classes} classes, the model was built for {built}; pass num_classes={classes}"
            )
    parts = []
    if missing:
        parts.append(f"{_count(len(missing), 'missing key')} ({_names(missing)})")
    if unexpected:
        parts.append(f"{_count(len(unexpected), 'unexpected key')} ({_names(unexpected)})")
    if misshaped:
        shapes = (f"{k}: checkpoint {list(found[k])} vs model {list(expected[k])}" for k in misshaped)
        parts.append(f"{_count(len(misshaped), 'mis-shaped tensor')} ({_names(shapes)})")
    message = f"{where}: " + ", ".join(parts)
    match = _detect(found)
    if match is not None and match[0] != name:
        message += f"; this looks like {match[0]}" + (f" with num_classes={match[1]}" if match[1] != 1000 else "")
    raise CheckpointError(message)


def load_checkpoint(model: nn.Module, path: str | Path, use_ema: bool = False) -> LoadedCheckpoint:
    """Load `path` into `model` strictly; raises CheckpointError (one line) if it does not fit.

    `use_ema` takes the `model_ema` weights, and is an error for a file without them.
    """
    path = Path(path)
    state_dict, source, stripped = read_state_dict(path, use_ema=use_ema)
    _check_fits(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True)
    return LoadedCheckpoint(path, checkpoint_sha256(path), source, stripped, len(state_dict))
