"""Checkpoint loading: every supported layout round-trips exactly; every bad file gets one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from glnet import GLNet, create_model, get_config, list_models
from glnet.checkpoint import (
    CheckpointError,
    checkpoint_sha256,
    detect_variant,
    load_checkpoint,
    read_state_dict,
)
from glnet.testing import perturb_weights_

LAYOUT_JSON = Path(__file__).resolve().parents[1] / "data" / "glnet_checkpoint_layout.json"


def _model(name: str, seed: int = 0, num_classes: int = 1000) -> GLNet:
    torch.manual_seed(seed)
    return perturb_weights_(GLNet(get_config(name), num_classes=num_classes), seed=seed).eval()


def _input() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(123))


@torch.no_grad()
def _outputs(model: GLNet) -> torch.Tensor:
    return model.eval()(_input())


def _error(model: GLNet, path: Path, use_ema: bool = False) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path, use_ema=use_ema)
    message = str(info.value)
    assert "\n" not in message and message == message.strip()
    return message


@pytest.fixture(scope="module")
def source() -> GLNet:
    return _model("glnet_tiny_ls", seed=1)


FORMATS = {
    "model": (lambda sd: {"model": sd, "epoch": 300}, "model", False),
    "state_dict": (lambda sd: {"state_dict": sd, "optimizer": {"lr": 0.1}}, "state_dict", False),
    "model_ema_alone": (lambda sd: {"model_ema": sd}, "model_ema", False),
    "bare": (lambda sd: sd, "<root>", False),
    "module_prefix": (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, "model", True),
    "bare_module_prefix": (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "<root>", True),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_exactly(fmt: str, source: GLNet, tmp_path: Path) -> None:
    wrap, expected_source, expected_stripped = FORMATS[fmt]
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(source.state_dict()), path)
    target = GLNet(get_config("glnet_tiny_ls"))
    loaded = load_checkpoint(target, path)
    assert torch.equal(_outputs(target), _outputs(source))
    assert loaded.path == path and loaded.source == expected_source and loaded.stripped_prefix == expected_stripped
    assert loaded.num_tensors == len(source.state_dict())
    assert loaded.sha256 == checkpoint_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["glnet_tiny", "glnet_stl_tiny"])
def test_other_tiny_variants_round_trip_through_create_model(name: str, tmp_path: Path) -> None:
    source = _model(name, seed=2)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": source.state_dict()}, path)
    assert torch.equal(_outputs(create_model(name, checkpoint=path)), _outputs(source))


def test_legacy_serialization_loads(source: GLNet, tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"model": source.state_dict()}, path, _use_new_zipfile_serialization=False)
    target = GLNet(get_config("glnet_tiny_ls"))
    load_checkpoint(target, path)
    assert torch.equal(_outputs(target), _outputs(source))


def test_model_ema_preferred_with_use_ema(tmp_path: Path) -> None:
    plain, ema = _model("glnet_tiny_ls", seed=3), _model("glnet_tiny_ls", seed=4)
    assert not torch.equal(_outputs(plain), _outputs(ema))
    path = tmp_path / "both.pth"
    torch.save({"model": plain.state_dict(), "model_ema": ema.state_dict()}, path)

    target = GLNet(get_config("glnet_tiny_ls"))
    assert load_checkpoint(target, path, use_ema=True).source == "model_ema"
    assert torch.equal(_outputs(target), _outputs(ema))
    assert load_checkpoint(target, path).source == "model"
    assert torch.equal(_outputs(target), _outputs(plain))


def test_use_ema_without_ema_weights(source: GLNet, tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    torch.save({"model": source.state_dict(), "epoch": 1}, path)
    message = _error(GLNet(get_config("glnet_tiny_ls")), path, use_ema=True)
    assert message == (
        f"checkpoint {path} has no EMA weights: no 'model_ema' among its top-level keys ('model', 'epoch'); "
        "load it without use_ema"
    )


def test_read_state_dict_without_model(source: GLNet, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    state_dict, key, stripped = read_state_dict(path)
    assert key == "state_dict" and stripped and state_dict.keys() == source.state_dict().keys()


# --- files that are not checkpoints -------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    assert _error(GLNet(get_config("glnet_tiny")), path) == f"checkpoint not found: {path}"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.touch()
    assert _error(GLNet(get_config("glnet_tiny")), path) == f"checkpoint {path} is an empty file (0 bytes)"


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert "is not a PyTorch checkpoint" in _error(GLNet(get_config("glnet_tiny")), path)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"echo pwned > {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_would_run_code_is_refused(writer: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    message = _error(GLNet(get_config("glnet_tiny")), path)
    assert not marker.exists()
    assert message.startswith(
        f"checkpoint {path} refused: the file contains Python code/objects that are not plain tensors, "
        "loading it could run code"
    )
    assert "system" in message  # the global it would have called


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_file(zip_format: bool, source: GLNet, tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"model": source.state_dict()}, path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert f"checkpoint {path} is truncated" in _error(GLNet(get_config("glnet_tiny_ls")), path)


def test_no_state_dict_lists_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "optim.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    assert _error(GLNet(get_config("glnet_tiny")), path) == (
        f"checkpoint {path} holds no state dict: top-level keys are 'epoch', 'optimizer'; "
        "expected 'model', 'state_dict', 'model_ema' or the weights themselves"
    )


# --- checkpoints that do not fit the model -----------------------------------------------


def test_wrong_variant_is_named(tmp_path: Path) -> None:
    path = tmp_path / "stl.pth"
    torch.save({"model": _model("glnet_stl_tiny").state_dict()}, path)
    message = _error(GLNet(get_config("glnet_tiny")), path)
    assert message.startswith(f"checkpoint {path} does not fit glnet_tiny: ")
    assert "missing keys" in message and "unexpected keys" in message
    assert message.endswith("; this looks like glnet_stl_tiny")


def test_mis_shaped_tensor_leaves_model_untouched(source: GLNet, tmp_path: Path) -> None:
    state_dict = source.state_dict()
    state_dict["stages.0.blocks.0.slot_scale"] = torch.ones(2)
    path = tmp_path / "shape.pth"
    torch.save(state_dict, path)
    target = _model("glnet_tiny_ls", seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert _error(target, path) == (
        f"checkpoint {path} does not fit glnet_tiny_ls: "
        "1 mis-shaped tensor (stages.0.blocks.0.slot_scale: checkpoint [2] vs model [])"
    )
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_missing_key(source: GLNet, tmp_path: Path) -> None:
    state_dict = source.state_dict()
    del state_dict["norm.running_var"]
    path = tmp_path / "missing.pth"
    torch.save({"model": state_dict}, path)
    assert _error(GLNet(get_config("glnet_tiny_ls")), path) == (
        f"checkpoint {path} does not fit glnet_tiny_ls: 1 missing key (norm.running_var)"
    )


def test_different_num_classes(tmp_path: Path) -> None:
    source = _model("glnet_tiny", seed=6, num_classes=10)
    path = tmp_path / "finetuned.pth"
    torch.save({"model": source.state_dict()}, path)
    assert _error(GLNet(get_config("glnet_tiny")), path) == (
        f"checkpoint {path} does not fit glnet_tiny: head has 10 classes, the model was built for 1000; "
        "pass num_classes=10"
    )
    assert torch.equal(_outputs(create_model("glnet_tiny", checkpoint=path, num_classes=10)), _outputs(source))


# --- variant detection --------------------------------------------------------------------


def test_detect_variant_on_meta_state_dicts() -> None:
    # Meta tensors: full-size layouts without allocating any weights.
    for name in list_models():
        with torch.device("meta"):
            model = GLNet(get_config(name), num_classes=10 if name == "glnet_9g" else 1000)
        assert detect_variant(model.state_dict()) == name
    assert detect_variant({"weight": torch.zeros(3)}) is None


def test_detect_variant_on_reference_layouts() -> None:
    for name, layout in json.loads(LAYOUT_JSON.read_text()).items():
        state_dict = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
        assert detect_variant(state_dict) == name
