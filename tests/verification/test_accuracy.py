"""Accuracy on labelled images with a model that has some (glnet_tiny trained on the digits,
>= 90% held out): fp32 files score exactly what PyTorch scores on the same images, every
layout of those images scores the same, and the command's table, JSON and CSV say so."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from helpers_labelled import LabelledFolder
from helpers_trained import TrainedDigits
from typer.testing import CliRunner

from glnet_export.cli import app
from verification.accuracy import AccuracyOptions, evaluate_accuracy


@pytest.fixture(scope="module")
def digits_ir(digits_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino")
    from export.openvino import OpenVinoOptions, convert_openvino

    return convert_openvino(digits_onnx, tmp_path_factory.mktemp("digits-ir") / "digits.xml",
                            OpenVinoOptions(precision="fp32")).xml


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["accuracy", *args])
    return result.exit_code, result.stdout, result.stderr


def test_fp32_onnx_and_openvino_f32_score_exactly_what_pytorch_scores(
        digits: TrainedDigits, digits_onnx: Path, digits_ir: Path, digits_labelled: dict[str, LabelledFolder]) -> None:
    seen: list[tuple[str, int, int]] = []
    result = evaluate_accuracy([digits_onnx, digits_ir], digits_labelled["index-folders"].data,
                               reference=digits.model, checkpoint=digits.checkpoint,
                               options=AccuracyOptions(batch=50, precision="fp32"),
                               progress=lambda what, done, total: seen.append((what, done, total)))
    torch_row, onnx_row, ir_row = result.rows
    assert [r.name for r in result.rows] == ["pytorch", str(digits_onnx), str(digits_ir)]
    assert ir_row.backend.startswith("openvino") and ir_row.precision == "fp32"
    assert result.images == 200 and result.classes == 10 and not result.unreadable
    # PyTorch here is the fixture's own held-out accuracy, measured without this code.
    assert torch_row.top1.hits == round(digits.eval_accuracy * 200) >= 180
    for row in (onnx_row, ir_row):
        assert row.top1.hits == torch_row.top1.hits and row.top5.hits == torch_row.top5.hits
        assert row.agreement_with_pytorch is not None and row.agreement_with_pytorch.hits == 200
        change = row.change_from_pytorch
        assert change is not None and change.change == 0 and change.gained == change.lost == 0
        assert change.low < 0 < change.high  # 200 images do not prove "no change" to the last image
        assert row.images_per_second > 0
    assert seen[0][1] == 0 and seen[-1][1:] == (200, 200)


@pytest.mark.parametrize("layout", ["synset-folders", "name-folders", "labels-file", "ilsvrc-devkit",
                                    "ilsvrc-kaggle"])
def test_every_layout_scores_the_same(layout: str, digits: TrainedDigits, digits_onnx: Path,
                                      digits_labelled: dict[str, LabelledFolder]) -> None:
    spec = digits_labelled[layout]
    result = evaluate_accuracy([digits_onnx], spec.data, spec.labels, options=AccuracyOptions(batch=64))
    assert result.layout == layout and result.images == 200
    assert result.rows[0].top1.hits == round(digits.eval_accuracy * 200)
    assert result.rows[0].change_from_pytorch is None and result.reference is None


def test_command_json_csv_and_table(digits: TrainedDigits, digits_onnx: Path,
                                    digits_labelled: dict[str, LabelledFolder], tmp_path: Path) -> None:
    assert digits.checkpoint is not None
    data = tmp_path / "data"
    shutil.copytree(digits_labelled["synset-folders"].data, data)
    (data / "n01440764" / "broken.png").write_bytes(b"not an image")
    csv_path = tmp_path / "acc.csv"
    code, stdout, stderr = _cli(str(digits_onnx), "--data", str(data), "--checkpoint", str(digits.checkpoint),
                                "--json", "-", "--csv", str(csv_path), "--batch", "40")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["layout"] == "synset-folders" and report["images"] == 200 and report["images_found"] == 201
    onnx_row = report["rows"][1]
    assert onnx_row["top1"]["value"] == report["rows"][0]["top1"]["value"] == round(digits.eval_accuracy, 3)
    assert 0 < onnx_row["top1"]["low"] < onnx_row["top1"]["value"] <= onnx_row["top1"]["high"] <= 1
    assert onnx_row["change_from_pytorch"]["change"] == 0 and onnx_row["agreement_with_pytorch"]["value"] == 1
    assert onnx_row["images_per_second"] > 0 and onnx_row["top5"]["value"] >= onnx_row["top1"]["value"]
    assert len(onnx_row["unreadable"]) == 1 and "broken.png" in onnx_row["unreadable"][0]
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["format"] for r in rows] == ["pytorch", str(digits_onnx)] and rows[0]["change_from_pytorch"] == ""
    assert float(rows[1]["top1"]) == onnx_row["top1"]["value"] and rows[1]["unreadable"] == "1"

    code, stdout, stderr = _cli(str(digits_onnx), "--data", str(data))
    assert code == 0 and stderr == "", stderr
    assert "Accuracy on 200 images of 10 classes" in stdout and "1 unreadable image(s) skipped" in stdout
    assert "--checkpoint (and --model) adds PyTorch" in stdout and "onnxruntime fp32" in stdout
    assert f"{digits.eval_accuracy * 100:.2f} (" in stdout

    code, stdout, stderr = _cli(str(digits_onnx), "--data", str(data), "--limit", "30", "--seed", "4", "--json", "-")
    assert code == 0, stderr
    sampled = json.loads(stdout)
    assert sampled["images"] + len(sampled["unreadable"]) == 30 and sampled["limit"] == 30 and sampled["seed"] == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "{data}/n01440764"], "images and no labels"),
    (["--data", "{tmp}/nowhere"], "does not exist"),
    (["--data", "{data}", "--labels", "{tmp}/ILSVRC2012_validation_ground_truth.txt"], "meta.mat"),
    (["--data", "{data}", "--model", "glnet_tiny"], "--model needs --checkpoint"),
    (["--data", "{data}", "--batch", "0"], "--batch must be >= 1"),
    (["--data", "{tmp}/unknown"], "unknown class 'sevens'"),
])
def test_command_bad_input_is_one_line(args: list[str], message: str, digits_onnx: Path,
                                       digits_labelled: dict[str, LabelledFolder], tmp_path: Path) -> None:
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("490\n361\n")
    (tmp_path / "unknown" / "sevens").mkdir(parents=True)
    shutil.copy(next(digits_labelled["index-folders"].data.glob("7/*.png")), tmp_path / "unknown" / "sevens")
    data = digits_labelled["synset-folders"].data
    code, stdout, stderr = _cli(str(digits_onnx), *(a.format(data=data, tmp=tmp_path) for a in args))
    assert code == 1 and stdout == ""
    assert stderr.startswith("Error: ") and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_artifacts_with_other_classes_are_refused(digits_onnx: Path, tmp_path: Path,
                                                           digits_labelled: dict[str, LabelledFolder]) -> None:
    import onnx

    proto = onnx.load(digits_onnx)
    for prop in proto.metadata_props:
        if prop.key == "num_classes":
            prop.value = "12"
    other = tmp_path / "other.onnx"
    onnx.save(proto, other)
    code, _stdout, stderr = _cli(str(digits_onnx), str(other), "--data", str(digits_labelled["index-folders"].data))
    assert code == 1 and "has 12 classes" in stderr and "score them apart" in stderr


def test_the_all_format_table_scores_every_format_on_labelled_data(
        digits: TrainedDigits, digits_labelled: dict[str, LabelledFolder]) -> None:
    """`bench --model M --data DIR`: each format's top-1 on the labels and its change from
    PyTorch. Here, beside the accuracy command's tests, the suite's export of the digits
    model reuses the session's trace of it (same weights and options)."""
    from bench.suite import SuiteOptions, run_suite
    from glnet_export.bench_formats_cmd import suite_table

    options = SuiteOptions(input_size=(32, 32), formats=("pytorch", "onnxruntime"), rounds=1, per_round=1, warmup=1,
                           edge=False, data=digits_labelled["index-folders"].data, limit=40)
    result = run_suite(digits.model, options, checkpoint_sha256="0" * 64)
    rows = {r.format: r for r in result.rows}
    torch_acc, onnx_acc = rows["pytorch"].accuracy, rows["onnxruntime"].accuracy
    assert torch_acc is not None and onnx_acc is not None and onnx_acc.images == 40
    assert onnx_acc.top1.hits == torch_acc.top1.hits >= 36
    assert onnx_acc.change_from_pytorch is not None and onnx_acc.change_from_pytorch.change == 0
    assert torch_acc.change_from_pytorch is None
    table = suite_table(result, "digits")
    headers = [str(c.header) for c in table.columns]
    assert headers[headers.index("top-1") + 1 : headers.index("top-1") + 3] == ["data top-1 %", "vs PyTorch pp"]
    assert "40 labelled images" in str(table.caption)
