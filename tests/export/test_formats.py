"""The one table of formats: every entry is complete, names follow one rule, options are
refused before slow work, and a model given for an ONNX-built format goes through ONNX."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from helpers import TINY_SIZE, shared_tiny
from typer.testing import CliRunner

import runtimes
from artifacts.errors import OptionError
from export import formats
from export.formats import CONVERTERS, FORMATS, Format, build, check_options, default_output, get_format
from glnet_export.cli import app


def test_every_entry_names_a_converter_a_runtime_and_a_source() -> None:
    loaders = set(runtimes.SUFFIXES.values()) | {"torch"}
    for fmt in FORMATS.values():
        assert fmt.converter in CONVERTERS or (fmt.name == "pytorch" and fmt.converter == ""), fmt.name
        assert fmt.runtime in loaders, fmt.name
        assert fmt.built_from in ("model", "onnx"), fmt.name
        assert fmt.description and fmt.precision, fmt.name
        assert fmt.requires, f"{fmt.name}: what must be installed is part of the entry"
    assert [f for f in FORMATS.values() if f.built_from == "model" and f.converter] == [FORMATS["onnxruntime"]]


def test_the_table_reads_back_in_the_names_users_type() -> None:
    assert formats.parse_formats("openvino-int8, pytorch") == ("openvino-int8", "pytorch")
    assert formats.parse_formats(None) == tuple(FORMATS)
    with pytest.raises(OptionError, match="unknown format.*'openvino-bf16'.*known: pytorch"):
        formats.parse_formats("openvino-bf16")
    with pytest.raises(OptionError, match=r"\(none given\)"):
        formats.parse_formats(",")


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("onnxruntime", {}, "x/glnet_tiny.onnx"),
    ("onnxruntime-target", {}, "x/glnet_tiny_ort.onnx"),
    ("onnxruntime-target", {"fmt": "ort"}, "x/glnet_tiny.ort"),
    ("onnxruntime-int8", {}, "x/glnet_tiny_ort_int8.onnx"),
    ("openvino-auto", {}, "x/glnet_tiny.xml"),
    ("openvino-fp32", {}, "x/glnet_tiny_f32.xml"),
    ("openvino-fp16", {}, "x/glnet_tiny_fp16.xml"),
    ("openvino-int8", {"compute": "f32"}, "x/glnet_tiny_int8_f32.xml"),
    ("tensorrt-fp32", {}, "x/glnet_tiny.engine"),
    ("tensorrt-fp16", {}, "x/glnet_tiny_fp16.engine"),
    ("tensorrt-int8", {}, "x/glnet_tiny_int8.engine"),
])
def test_one_naming_rule_for_every_format(name: str, options: dict[str, str], expected: str) -> None:
    # Two precisions built from one ONNX never share a file name.
    source = Path("x/glnet_tiny.onnx")
    assert default_output(get_format(name), source, **options) == Path(expected)


def test_bad_options_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="--precision int8 needs --calib DIR"):  # the converter's own words
        check_options("openvino-int8")
    with pytest.raises(OptionError, match="onnxruntime-int8 needs calibration images: --calib DIR"):
        check_options("onnxruntime-int8")
    with pytest.raises(OptionError, match="--compute must be one of"):
        check_options("openvino-auto", compute="f16")
    with pytest.raises(OptionError, match="at least 32x32"):
        check_options("onnxruntime", input_size=(16, 16))
    with pytest.raises(OptionError, match="PyTorch reference"):
        check_options("pytorch")
    with pytest.raises(OptionError, match="--precision must be one of fp32, fp16, int8"):
        formats.openvino_format("bf16")


def test_a_missing_module_is_named_with_how_to_install_it() -> None:
    fmt = dataclasses.replace(FORMATS["openvino-auto"], requires=("openvino", "no_such_module_here"))
    assert fmt.missing() == f"needs no_such_module_here: {formats.OPENVINO}"
    assert FORMATS["onnxruntime"].missing() is None


def test_adding_a_format_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # An IR with fp16 weights built for f32 compute: not in the table, and one entry makes
    # it a format every command and the all-format table know.
    entry = Format("openvino-fp16-f32", "fp16 weights, f32 compute", built_from="onnx", converter="openvino",
                   runtime="openvino", precision="fp32, fp16 weights", options={"precision": "fp16", "compute": "f32"},
                   requires=("openvino",))
    monkeypatch.setitem(FORMATS, entry.name, entry)
    assert formats.parse_formats("openvino-fp16-f32") == ("openvino-fp16-f32",)
    assert default_output(entry, Path("m.onnx")) == Path("m_fp16_f32.xml")
    result = CliRunner().invoke(app, ["formats", "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["openvino-fp16-f32"]["options"] == {"precision": "fp16", "compute": "f32"}
    assert rows["tensorrt-fp16"]["available"] is (FORMATS["tensorrt-fp16"].missing() is None)


def test_a_model_given_for_an_onnx_built_format_goes_through_a_temporary_onnx(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    model = shared_tiny()  # seeded, and traced at this size by other modules: the session shares the trace
    size = (TINY_SIZE, TINY_SIZE)
    result = build("openvino-auto", model, tmp_path / "tiny.xml", onnx_options={"input_size": size})
    assert result.path == tmp_path / "tiny.xml" and result.xml.is_file()
    assert result.metadata.model == "glnet_tiny" and result.metadata.input_size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.bin", "tiny.xml"], "the ONNX step leaves nothing"
