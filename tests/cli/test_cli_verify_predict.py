"""The command line on a tiny export: `verify` and `predict`, and what every command owes a
user with bad input (unreadable artifacts, bad option values, usage errors: one line, no
work done), plus `models`, `--ema` and `GLNET_EXPORT_DEBUG`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import TINY_SIZE, shared_tiny
from onnx import numpy_helper
from typer.testing import CliRunner

import glnet
import runtimes
from artifacts.photos import sample_photo_paths
from artifacts.preprocess import preprocess
from export.onnx import OnnxExportOptions, export_onnx
from glnet.checkpoint import checkpoint_sha256
from glnet.testing import seeded_model
from glnet_export.cli import app

# The installed `glnet-export` script, run the way a shell runs it (CliRunner bypasses main()).
CONSOLE_SCRIPT = [sys.executable, "-c", "from glnet_export.cli import main; main()"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    # `shared_tiny` at `TINY_SIZE`, as `tiny_dynamic_onnx` and test_onnx_export: the session
    # traces these weights and options once for all of them (conftest).
    model = shared_tiny()
    ckpt = folder / "tiny.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    other = folder / "other.pth"
    torch.save({"model": seeded_model("glnet_tiny", seed=8).state_dict()}, other)
    with_ckpt = folder / "tiny.onnx"
    export_onnx(model, with_ckpt, OnnxExportOptions(dynamic="shape", input_size=(TINY_SIZE, TINY_SIZE)),
                checkpoint_sha256=checkpoint_sha256(ckpt))
    random = folder / "random.onnx"
    export_onnx(model, random, OnnxExportOptions(input_size=(TINY_SIZE, TINY_SIZE)))
    # The same graph with other weights: every float initializer of random.onnx moved (an
    # export of other.pth would give the same, one dynamo trace later).
    proto = onnx.load(random)
    rng = np.random.default_rng(8)
    for init in proto.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype == np.float32 and weights.size > 1:
            moved = weights + rng.standard_normal(weights.shape).astype(np.float32) * 0.2
            init.CopyFrom(numpy_helper.from_array(moved, init.name))
    other_onnx = folder / "other.onnx"
    onnx.save(proto, other_onnx)
    return {"ckpt": ckpt, "other": other, "onnx": with_ckpt, "random": random, "other_onnx": other_onnx}


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_verify_against_the_checkpoint_passes_at_chosen_shapes(artifacts: dict[str, Path]) -> None:
    code, stdout, stderr = _cli("verify", str(artifacts["onnx"]), "--checkpoint", str(artifacts["ckpt"]),
                                "--shapes", "1x3x96x96,2x3x77x131", "--json", "-")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["passed"] is True
    assert [r["shape"] for r in report["results"]] == [[1, 3, 96, 96], [2, 3, 77, 131]]
    assert all(r["max_rel"] < 1e-4 for r in report["results"])


def test_verify_refuses_a_different_checkpoint(artifacts: dict[str, Path]) -> None:
    code, _, stderr = _cli("verify", str(artifacts["onnx"]), "--checkpoint", str(artifacts["other"]))
    assert code == 1 and "is not the checkpoint" in stderr and "Traceback" not in stderr


def test_verify_refuses_to_rebuild_random_weights(artifacts: dict[str, Path]) -> None:
    code, _, stderr = _cli("verify", str(artifacts["random"]))
    assert code == 1 and "random weights" in stderr


def test_verify_compares_two_artifacts(artifacts: dict[str, Path]) -> None:
    # The same weights exported twice (one records no checkpoint): the pair must agree.
    code, stdout, stderr = _cli("verify", str(artifacts["random"]), str(artifacts["onnx"]), "--json", "-")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["passed"] is True and all(r["max_rel"] < 1e-4 for r in report["results"])
    # Other weights in the same architecture: the pair must not.
    code, stdout, stderr = _cli("verify", str(artifacts["random"]), str(artifacts["other_onnx"]), "--json", "-")
    assert code == 1 and "Traceback" not in stderr
    assert json.loads(stdout)["passed"] is False


def test_verify_bad_shape_option(artifacts: dict[str, Path]) -> None:
    code, _, stderr = _cli("verify", str(artifacts["onnx"]), "--checkpoint", str(artifacts["ckpt"]),
                           "--shapes", "1x4x96x96")
    assert code == 1 and "Nx3xHxW" in stderr


def test_predict_prints_sorted_top_k(artifacts: dict[str, Path]) -> None:
    photos = [str(p) for p in sample_photo_paths(2)]
    code, stdout, stderr = _cli("predict", str(artifacts["onnx"]), *photos, "-k", "3", "--json", "-")
    assert code == 0, stderr
    predictions = json.loads(stdout)
    assert [p["image"] for p in predictions] == photos
    for p in predictions:
        probs = [c["probability"] for c in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(isinstance(c["label"], str) and c["label"] for c in p["top"])
    # The classes and probabilities PyTorch gives the same preprocessed photographs.
    model = glnet.create_model("glnet_tiny", checkpoint=artifacts["ckpt"]).eval()
    with runtimes.load(artifacts["onnx"]) as runner:
        meta = runner.metadata
    assert meta is not None
    for path, p in zip(photos, predictions, strict=True):
        with torch.inference_mode():
            probs = torch.softmax(model(torch.from_numpy(preprocess(path, meta))), dim=1)[0]
        top = torch.topk(probs, 3)
        assert [c["index"] for c in p["top"]] == top.indices.tolist()
        assert [c["probability"] for c in p["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_predict_unreadable_image_is_one_line(artifacts: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    code, stdout, stderr = _cli("predict", str(artifacts["onnx"]), str(bad))
    assert code == 1 and "not a readable image" in stderr
    assert len([ln for ln in stderr.splitlines() if ln.startswith("Error:")]) == 1


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage" * 50, "truncated"])
def test_unreadable_artifacts_get_one_line_in_every_command(content: bytes | str, artifacts: dict[str, Path],
                                                            tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(artifacts["onnx"].read_bytes()[:4000] if content == "truncated" else content)
    expected = "empty file" if content == b"" else "cannot load it"
    photo = str(sample_photo_paths(1)[0])
    for args in (["verify", str(bad), "--checkpoint", str(artifacts["ckpt"])], ["predict", str(bad), photo],
                 ["bench", "run", str(bad), "--iters", "1"], ["slots", str(bad), photo]):
        code, _, stderr = _cli(*args)
        errors = [ln for ln in stderr.splitlines() if ln.startswith("Error:")]
        assert code == 1 and len(errors) == 1 and "unexpected" not in stderr and "Traceback" not in stderr, (args,
                                                                                                              stderr)
        assert str(bad) in errors[0] and (expected in errors[0] or "not a readable ONNX file" in errors[0]), errors


def test_an_unwritable_json_report_is_refused_before_any_work(artifacts: dict[str, Path], tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for args in (["verify", str(artifacts["random"]), str(artifacts["onnx"])], ["onnx", "--model", "glnet_tiny",
                                                                               "-o", str(tmp_path / "x.onnx")]):
        code, _, stderr = _cli(*args, "--json", str(a_file / "r.json"))
        assert code == 1 and "a_file is not a folder" in stderr
    assert not (tmp_path / "x.onnx").exists(), "refused before exporting"


@pytest.mark.parametrize(("args", "message"), [
    (["onnx", "--model", "glnet_tiny", "--min-top1", "5"], "--min-top1 is a fraction"),
    (["onnx", "--model", "glnet_tiny", "--min-cosine", "2"], "--min-cosine is a cosine"),
    (["onnx", "--model", "glnet_tiny", "--threads", "-3"], "--threads must be >= 1"),
    (["onnx", "--model", "glnet_tiny", "--num-classes", "0"], "--num-classes must be >= 1"),
    (["bench", "--model", "glnet_tiny", "--threads", "-3"], "--threads must be >= 1"),
    (["bench", "--threads", "-3", "-m", "glnet_tiny"], "--threads must be >= 1"),
    (["bench", "--model=glnet_tiny", "--formats", ","], "(none given)"),
    (["benchmark", "--model", "glnet_tiny", "--formats", "openvino-bf16"], "unknown format(s) 'openvino-bf16'"),
    (["openvino", "--model", "glnet_tiny", "--device", "NOSUCH"], "OpenVINO has no NOSUCH device"),
    (["verify", "ARTIFACT", "ARTIFACT", "--shapes", "100000x3x64x64"], "its input alone is 4.6 GiB"),
    (["verify", "ARTIFACT", "ARTIFACT", "--shapes", "1x3x16x64"], "at least 32"),
    (["serve", "ARTIFACT", "--threads", "-1"], "--threads must be >= 1"),
    (["serve", "ARTIFACT", "--device", "nosuch"], "device must be one of"),
    (["serve", "ARTIFACT", "--gpus-per-replica", "1"], "--gpus-per-replica reserves GPUs"),
])
def test_bad_option_values_are_refused_before_any_work(args: list[str], message: str, artifacts: dict[str, Path],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where the default outputs (glnet_tiny.onnx, .xml) would land
    args = [str(artifacts["onnx"]) if a == "ARTIFACT" else a for a in args]
    code, _, stderr = _cli(*args)
    errors = [ln for ln in stderr.splitlines() if ln.startswith("Error:")]
    assert code == 1 and len(errors) == 1 and message in errors[0] and "unexpected" not in stderr, stderr
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_help_shows_the_defaults_written_in_the_help_text() -> None:
    # Rich reads "[default: ...]" in a help text as markup and drops it.
    result = CliRunner().invoke(app, ["onnx", "--help"], env={"COLUMNS": "200"})
    assert "(default: MODEL.onnx)" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["onnx"], "Missing option '--model'"),
    (["predict", "x.onnx", "x.png", "-k", "0"], "Invalid value for '--top-k'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["onnx", "--model", "glnet_tiny", "--bogus"], "No such option: --bogus"),
])
def test_usage_errors_are_one_line_from_the_console_script(args: list[str], message: str) -> None:
    # The console script's own handling (CliRunner would bypass it): exit code 2 as click
    # gives, but one Error line instead of the boxed usage text.
    result = subprocess.run([*CONSOLE_SCRIPT, *args], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == "", result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr


def test_models_lists_the_variants_with_their_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    import glnet.complexity

    code, stdout, _ = _cli("models", "--json", "-")
    rows = {r["name"]: r for r in json.loads(stdout)}
    assert code == 0 and {"glnet_stl", "glnet_4g", "glnet_9g", "glnet_16g", "glnet_tiny"} <= set(rows)
    # GLNET.md's table: 27.0 M parameters for glnet_4g, 106.1 M for glnet_16g.
    assert rows["glnet_4g"]["params"] == pytest.approx(27.0e6, rel=2e-3)
    assert rows["glnet_16g"]["params"] == pytest.approx(106.1e6, rel=2e-3)
    assert rows["glnet_4g"]["macs_224"] > rows["glnet_tiny"]["macs_224"] > 0
    # --no-tiny only filters the list: the counts just checked need not be taken again.
    monkeypatch.setattr(glnet.complexity, "count_complexity",
                        lambda name: glnet.complexity.Complexity(name, rows[name]["params"], rows[name]["macs_224"],
                                                                 (224, 224)))
    code, stdout, _ = _cli("models", "--no-tiny", "--json", "-")
    shown = json.loads(stdout)
    assert code == 0 and shown and not any(r["tiny"] for r in shown)
    assert {r["name"] for r in shown} == {name for name, r in rows.items() if not r["tiny"]}


def test_ema_weights_are_what_the_cli_exports_with_ema(tmp_path: Path) -> None:
    plain = seeded_model("glnet_tiny", seed=1)
    ema = shared_tiny()  # exported fixed at `TINY_SIZE` by test_onnx_export too: one trace
    ckpt = tmp_path / "ema.pth"
    torch.save({"model": plain.state_dict(), "model_ema": ema.state_dict()}, ckpt)
    out = tmp_path / "ema.onnx"
    code, _, stderr = _cli("onnx", "--model", "glnet_tiny", "-c", str(ckpt), "--ema", "--input-size", str(TINY_SIZE),
                           "--dynamic", "none", "-o", str(out))
    assert code == 0, stderr
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.inference_mode(), runtimes.load(out) as runner:
        got = torch.from_numpy(runner.infer(x.numpy()))
        assert torch.allclose(got, ema.eval()(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(got, plain.eval()(x), rtol=1e-2, atol=1e-2)


def test_debug_variable_shows_the_traceback() -> None:
    command = [*CONSOLE_SCRIPT, "onnx", "--model", "glnet_tiny", "-c", "missing.pth"]
    quiet = subprocess.run(command, capture_output=True, text=True)
    loud = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GLNET_EXPORT_DEBUG": "1"})
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and "checkpoint not found" in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "CheckpointError" in loud.stderr


def test_bench_exits_1_when_a_requested_size_cannot_run(artifacts: dict[str, Path], tmp_path: Path) -> None:
    # random.onnx is fixed at `TINY_SIZE`: the cell at twice that cannot run. What ran is
    # kept and reported; the exit code says that not everything asked for was measured.
    report = tmp_path / "b.json"
    sizes = f"{TINY_SIZE},{2 * TINY_SIZE}"
    code, stdout, stderr = _cli("bench", "run", str(artifacts["random"]), "--input-size", sizes, "--iters", "2",
                                "--warmup", "0", "--json", str(report))
    assert code == 1 and "1 of 2 batch x size combinations could not run" in stderr, stderr
    results = json.loads(report.read_text())["artifacts"][0]["results"]
    assert [r["error"] == "" for r in results] == [True, False] and "fixed" in results[1]["error"]


def test_a_precision_onnxruntime_cannot_honour_is_refused(artifacts: dict[str, Path]) -> None:
    # Only OpenVINO picks a compute precision at load time; ignoring the request for an
    # ONNX file would report fp32 results as bf16 ones.
    photo = str(sample_photo_paths(1)[0])
    code, _, stderr = _cli("predict", str(artifacts["onnx"]), photo, "--precision", "bf16")
    assert code == 1 and "can only be asked of an OpenVINO IR" in stderr
    code, _, stderr = _cli("predict", str(artifacts["onnx"]), photo, "--precision", "fp32")
    assert code == 0, stderr


def test_the_bench_family_reads_as_one_command() -> None:
    # `bench ARTIFACT...`, `bench --model M`, `bench compare A B`; `benchmark` (the
    # all-format table's first name) still works but is no longer listed.
    def words(*args: str) -> str:  # the help text without rich's box and line breaks
        return " ".join(CliRunner().invoke(app, list(args)).stdout.replace("│", " ").split())

    top = words("--help")
    assert " bench Latency" in top and top.count("benchmark") == top.count("and benchmark it")  # no row
    bench = words("bench", "--help")
    assert "`bench --model M`" in bench and "`bench compare A.json B.json`" in bench
    by_model = words("bench", "--model", "glnet_tiny", "--help")
    assert "--formats" in by_model and "--checkpoint" in by_model
    by_files = words("bench", "a.onnx", "--help")
    assert "--per-layer" in by_files and "--formats" not in by_files
