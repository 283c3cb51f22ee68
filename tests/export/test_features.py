"""Dense-task backbones: `onnx --features [--with-slots]`, verified, and `slots` pictures.

One feature artifact (glnet_tiny, dynamic batch and size, two slot maps) is exported per
module through the CLI, from a checkpoint of perturbed weights, and verified like the
classifier; the tests then check it against PyTorch at other shapes themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import glnet
import runtimes
from artifacts.errors import OptionError
from artifacts.metadata import ArtifactMetadata
from artifacts.photos import sample_photo_paths
from export.onnx import OnnxExportOptions, export_onnx
from glnet.features import STRIDES, GLNetFeatures, UnknownSlotBlockError, resolve_slot_blocks
from glnet.testing import perturb_weights_
from glnet_export.cli import app
from serving.predictor import Predictor, PredictorError
from serving.slot_maps import network_input

SIZE = 128
SLOTS = ("slots_stages.0.blocks.0", "slots_stages.2.blocks.0")  # "0.0" and "last" of glnet_tiny
OUTPUTS = ("stage1", "stage2", "stage3", "stage4", *SLOTS)
cli = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_model: glnet.GLNet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("features")
    torch.save({"model": tiny_model.state_dict()}, folder / "tiny.pth")
    path, report = folder / "feat.onnx", folder / "report.json"
    result = cli.invoke(app, ["onnx", "--model", "glnet_tiny", "--checkpoint", str(folder / "tiny.pth"),
                              "--features", "--with-slots", "0.0,last", "--dynamic", "shape",
                              "--input-size", str(SIZE), "--threads", "2", "-o", str(path), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "slots_stages.2.blocks.0" in result.output
    return path, json.loads(report.read_text())


@pytest.fixture(scope="module")
def photo() -> Path:
    photos = sample_photo_paths()
    assert photos, "no sample photographs: scikit-image (a dependency) is missing"
    return photos[1]  # chelsea.png, 451 x 300: not square


def test_export_is_verified_output_by_output(exported: tuple[Path, dict]) -> None:
    _, report = exported
    results = report["verification"]["results"]
    assert report["verification"]["passed"] and len(results) == 4  # the export shape, a batch, two sizes
    for r in results:
        assert list(r["outputs"]) == list(OUTPUTS)
        assert all(m["max_rel"] < 1e-5 and m["cosine"] > 0.99999 for m in r["outputs"].values())
        assert r["top1"] is None, "no top-1 for feature maps"
    meta = report["export"]["metadata"]
    assert meta["task"] == "features" and meta["outputs"] == list(OUTPUTS) and meta["output_name"] == "stage1"


@pytest.mark.parametrize("shape", [(2, 3, 160, 192), (1, 3, 97, 131)])
def test_four_stages_at_strides_4_to_32_match_pytorch(shape: tuple[int, ...], exported: tuple[Path, dict],
                                                      tiny_model: glnet.GLNet) -> None:
    x = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
    with torch.inference_mode():
        stages = tiny_model.forward_stages(torch.from_numpy(x))
    with runtimes.load(exported[0]) as runner:
        assert [o.name for o in runner.outputs] == list(OUTPUTS)
        out = runner.infer_all(x)
    for name, stride, ref in zip(OUTPUTS[:4], STRIDES, stages, strict=True):  # the 4 maps; the slots below
        want = ref.numpy()
        # The stem and the 3 x 3 stride-2 convs with padding 1 round odd sizes up.
        assert out[name].shape == (shape[0], want.shape[1], -(-shape[2] // stride), -(-shape[3] // stride))
        assert out[name].shape == want.shape
        assert np.abs(out[name] - want).max() / np.abs(want).max() < 1e-5, name
    for name, stage in zip(SLOTS, ("stage1", "stage3"), strict=True):
        maps = out[name]
        assert maps.shape == (shape[0], 64, *out[stage].shape[2:])
        assert maps.min() >= 0
        np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-5)  # each pixel's share over the 64 slots


@pytest.mark.parametrize("name", ["glnet_tiny", "glnet_tiny_ls", "glnet_stl_tiny"])
def test_slot_maps_are_the_same_in_deploy_and_reference_form(name: str) -> None:
    net = glnet.create_model(name).eval()
    perturb_weights_(net, seed=2)
    x = torch.randn(2, 3, 97, 67, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain_ref, plain_dep = net(x), net.to_deploy()(x)
        features = GLNetFeatures(net.to_deploy(False), ["all"])  # switches recording on in every GLMix block
        ref, recorded_ref = features(x), net(x)
        net.to_deploy()
        dep, recorded_dep = features(x), net(x)
    assert len(ref) == 4 + len(resolve_slot_blocks(net, ["all"]))
    for a, b in zip(ref, dep, strict=True):
        assert (a - b).abs().max() / a.abs().max() < 1e-5
    # Recording only keeps a tensor the block computes anyway: the outputs are bit for bit the same.
    assert torch.equal(plain_ref, recorded_ref) and torch.equal(plain_dep, recorded_dep)


def test_slot_block_choice_is_checked(tiny_model: glnet.GLNet, tmp_path: Path) -> None:
    assert resolve_slot_blocks(tiny_model, ["last", "0.0", "stages.0.blocks.0"]) == ("stages.2.blocks.0",
                                                                                "stages.0.blocks.0")
    message = r"'2\.1' is not a GLMix block of glnet_tiny; slots exist in 0\.0, 1\.0, 2\.0 "
    with pytest.raises(UnknownSlotBlockError, match=message):
        resolve_slot_blocks(tiny_model, ["2.1"])  # an MHSA block of the hybrid stage
    with pytest.raises(OptionError, match="add --features"):
        export_onnx(tiny_model, tmp_path / "x.onnx", OnnxExportOptions(slot_blocks=("last",)))
    result = cli.invoke(app, ["onnx", "--model", "glnet_tiny", "--features", "--with-slots", "3.0",
                              "-o", str(tmp_path / "y.onnx")])
    assert result.exit_code == 1 and "'3.0' is not a GLMix block" in result.output
    assert not (tmp_path / "y.onnx").exists()


def test_old_metadata_without_the_new_fields_still_parses() -> None:
    props = ArtifactMetadata(model="glnet_tiny", num_classes=1000).to_props()
    del props["task"], props["outputs"]
    meta = ArtifactMetadata.from_props(props)
    assert meta.task == "classify" and meta.outputs == ("logits",)


def test_predictor_gives_features_and_refuses_to_classify(exported: tuple[Path, dict], photo: Path) -> None:
    with Predictor(exported[0]) as predictor:
        out = predictor.features(photo)
        assert isinstance(out, dict) and list(out) == list(OUTPUTS)
        assert out["stage1"].shape == (32, SIZE // 4, SIZE // 4) and out["stage4"].shape == (96, SIZE // 32, SIZE // 32)
        with pytest.raises(PredictorError, match="not class logits: use features"):
            predictor.predict(photo)


def test_slots_command_draws_a_png_over_the_whole_image(exported: tuple[Path, dict], photo: Path,
                                                        tmp_path: Path) -> None:
    target = tmp_path / "map.png"
    result = cli.invoke(app, ["slots", str(exported[0]), str(photo), "-o", str(target), "--json", "-"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    with Image.open(photo) as original, Image.open(target) as drawn:
        assert drawn.format == "PNG" and drawn.mode == "RGB"
        assert drawn.size == original.size  # a dynamic-size artifact sees the whole image
        assert np.asarray(drawn).std() > 10, "not a blank picture"
    assert info["block"] == "stages.0.blocks.0" and 1 < info["slots_used"] <= 64
    assert info["map_size"] == [SIZE // 4, 192 // 4]  # 451 x 300 -> 192 x 128 (multiples of 32, aspect kept)

    grid = tmp_path / "grid.png"
    result = cli.invoke(app, ["slots", str(exported[0]), str(photo), "-o", str(grid), "--block", "2.0",
                              "--grid", "4"])
    assert result.exit_code == 0 and "slots of stages.2.blocks.0" in result.output
    with Image.open(grid) as drawn:
        assert drawn.height == 300 and drawn.width == 451 + 2 * round(451 * 150 / 300)  # 2 x 2 tiles beside it


@pytest.mark.parametrize(("args", "message"), [
    (["--block", "1.0"], "has no slot map of '1.0'; it has stages.0.blocks.0, stages.2.blocks.0"),
    (["-o", "map.xyz"], "unknown image type"),
])
def test_slots_command_errors_are_one_line(args: list[str], message: str, exported: tuple[Path, dict],
                                           photo: Path, tmp_path: Path) -> None:
    result = cli.invoke(app, ["slots", str(exported[0]), str(photo), "-o", str(tmp_path / "m.png"), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_fixed_size_artifacts_draw_their_centre_crop(photo: Path) -> None:
    meta = ArtifactMetadata(model="glnet_tiny", num_classes=1000, input_size=(SIZE, SIZE), dynamic="batch")
    with Image.open(photo) as img:
        batch, (left, top, right, bottom) = network_input(img.convert("RGB"), meta)
    assert batch.shape == (1, 3, SIZE, SIZE)
    side = 300 * meta.crop_pct  # the shorter side, less what the centre crop leaves out
    assert abs((right - left) - side) <= 2 and abs((bottom - top) - side) <= 2
    assert abs(left - (451 - right)) <= 1 and abs(top - (300 - bottom)) <= 1
