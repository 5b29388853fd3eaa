"""`profile` / `keras-vggres compare`: GMACs vs torchvision, params, memory, formats, CLI."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import keras_vggres
from keras_vggres import cli, registry, timing
from keras_vggres.models import specs
from keras_vggres.profiling import COLUMNS, format_rows, plot, profile

REPO = Path(__file__).resolve().parents[1]

# torchvision 0.29 Weights enums, tag tv1 (IMAGENET1K_V1): (`_ops` "GFLOPS" = GMACs at 224 px,
# `num_params`: trainable parameters, BatchNorm running statistics excluded).
TORCHVISION = {
    "vgg11": (7.609, 132863336), "vgg13": (11.308, 133047848),
    "vgg16": (15.470, 138357544), "vgg19": (19.632, 143667240),
    "vgg11_bn": (7.609, 132868840), "vgg13_bn": (11.308, 133053736),
    "vgg16_bn": (15.470, 138365992), "vgg19_bn": (19.632, 143678248),
    "resnet18": (1.814, 11689512), "resnet34": (3.664, 21797672),
    "resnet50": (4.089, 25557032), "resnet101": (7.801, 44549160),
    "resnet152": (11.514, 60192808),
}


@pytest.fixture(scope="module")
def tv_rows():
    """Every torchvision-layout model at 224 px, counted from its graph (no timings)."""
    rows = profile(list(TORCHVISION), weights="tv1", measure=False)
    return {row["model"]: row for row in rows}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_gmacs_match_torchvision_published(tv_rows, name):
    row = tv_rows[name]
    assert row["gmacs"] == pytest.approx(TORCHVISION[name][0], rel=0.005)
    assert row["published_gflops"] == TORCHVISION[name][0]
    assert 0 < row["small_gops"] < 0.01 * row["gmacs"]


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_params_are_the_builders_counts(tv_rows, name):
    row = tv_rows[name]
    assert row["params"] == specs.param_count(name, row["variant"])  # = count_params()
    assert row["trainable_params"] == TORCHVISION[name][1]           # torchvision's count
    assert row["file_mib_from"] == "size_mib" and row["file_mib"] > 40


def _spec_macs(depth_name, variant, size):
    """ResNet MACs from the spec tables alone (not the Keras graph)."""
    style = specs.STYLES[variant]
    side = size // specs.STEM_STRIDE
    macs = side * side * specs.STEM_KERNEL ** 2 * specs.IMAGE_CHANNELS * specs.STEM_WIDTH
    side //= specs.STEM_POOL_STRIDE
    for block in specs.resnet_blocks(depth_name, variant):
        h = side
        for conv in specs.block_convs(block, style):
            out = side // conv.stride if conv.index == 0 else h // conv.stride
            h = h if conv.index == 0 else out
            macs += out * out * conv.kernel ** 2 * conv.in_channels * conv.filters
        side //= block.stride
    return macs + specs.resnet_out_channels(depth_name) * 1000


def test_v1_resnet_is_computed_from_its_graph(tv_rows):
    (row,) = profile("resnet50:keras", measure=False)
    assert (row["tag"], row["variant"], row["published_gflops"]) == ("keras", "v1", None)
    assert round(row["gmacs"] * 1e9) == _spec_macs("resnet50", "v1", 224) == 3_857_973_248
    # v1 strides the first 1x1 conv, so v1.5's full-resolution 1x1 costs more.
    assert row["gmacs"] < tv_rows["resnet50"]["gmacs"]
    assert round(tv_rows["resnet50"]["gmacs"] * 1e9) == _spec_macs("resnet50", "v1.5", 224)
    assert row["params"] == 25636712 and row["file_mib_from"] == "size"


def test_activation_estimate_within_25_percent_of_measured_peak():
    """ResNet18, 64 px, batch 64 on CPU: TensorFlow's allocator peak of one train step."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the peak is read from TensorFlow's allocator")
    (row,) = profile("resnet18", image_size=64, batch_size=64, measure=False)
    model = registry.get_model("resnet18", weights=None, input_shape=(64, 64, 3))
    measured_mib = timing.train_step_peak_bytes(model, 64) / 2 ** 20
    assert row["params"] == model.count_params()
    assert row["activation_mib"] == pytest.approx(measured_mib, rel=0.25)


def test_measure_reports_runs_and_spread():
    (row,) = profile(["resnet18"], image_size=32, batch_size=2, runs=2, warmup=1)
    assert (row["runs"], row["warmup"], row["batch_size"]) == (2, 1, 2)
    assert 0 < row["latency_ms_min"] <= row["latency_ms"] <= row["latency_ms_max"]
    assert 0 < row["throughput_ips_min"] <= row["throughput_ips"] <= row["throughput_ips_max"]


def test_every_tag_by_default_one_build_per_variant():
    rows = profile(["resnet50"], image_size=32, measure=False)
    assert [(r["tag"], r["variant"]) for r in rows] == [
        ("keras", "v1"), ("tv1", "v1.5"), ("tv2", "v1.5")]
    assert [r["top1"] for r in rows] == [74.9, 76.13, 80.858]
    assert rows[1]["gmacs"] == rows[2]["gmacs"] != rows[0]["gmacs"]
    assert all(r["latency_ms"] is None and r["runs"] is None for r in rows)


def test_each_format_parses(tv_rows):
    rows = [tv_rows["vgg16"], tv_rows["resnet50"]]
    assert json.loads(format_rows(rows, "json")) == rows
    parsed = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert tuple(parsed[0]) == COLUMNS
    assert [float(r["gmacs"]) for r in parsed] == [r["gmacs"] for r in rows]
    assert parsed[0]["latency_ms"] == ""
    lines = format_rows(rows, "markdown").splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert {line.count(" | ") for line in lines} == {lines[0].count(" | ")}
    assert lines[2].startswith("| vgg16 | tv1 | - | 138.36 (138.36) | 15.470 |")
    table = format_rows(rows, "table").splitlines()
    assert len(table) == 2 + len(rows) and "GMACs" in table[0] and "4.089" in table[3]


def test_plot_returns_a_labelled_figure(tv_rows, tmp_path):
    rows = list(tv_rows.values())
    figure = plot(rows, tmp_path / "plot.png")
    (axes,) = figure.axes
    assert "GMACs" in axes.get_xlabel() and "top-1" in axes.get_ylabel() and axes.get_title()
    assert len(axes.texts) == len(rows)
    assert sum(len(c.get_offsets()) for c in axes.collections) == len(rows)
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_compare_no_measure_with_plot(tmp_path, capsys):
    out = tmp_path / "compare.png"
    assert cli.main(["compare", "resnet18", "vgg11:tv1", "--image-size", "32", "--no-measure",
                     "--format", "json", "--plot", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["tag"]) for r in rows] == [("resnet18", "tv1"), ("vgg11", "tv1")]
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_is_a_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(ImportError, match=r"keras_vggres\[plots\]"):
        plot([])
    out = tmp_path / "none.png"
    assert cli.main(["compare", "resnet18", "--image-size", "32", "--no-measure",
                     "--plot", str(out)]) == 0
    captured = capsys.readouterr()
    assert "resnet18" in captured.out and "matplotlib is not installed" in captured.err
    assert not out.exists()


def test_bad_arguments_say_what_is_accepted(tv_rows, capsys):
    with pytest.raises(ValueError, match=r"`fmt` must be one of \('table', .*received fmt='xml'"):
        format_rows([tv_rows["vgg16"]], "xml")
    with pytest.raises(ValueError, match=r"Unknown model name='resnet5'.*Did you mean"):
        profile(["resnet18", "resnet5"], measure=False)
    with pytest.raises(ValueError, match=r"weights='tv9'.*accepted tags"):
        profile("resnet50:tv9", measure=False)
    with pytest.raises(ValueError, match=r"`image_size` must be an integer >= 32.*16"):
        profile("resnet18", image_size=16)
    assert cli.main(["compare", "vgg17", "--no-measure"]) == 2
    assert "Unknown model name='vgg17'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", "vgg16", "--format", "xml"])
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_profile_is_the_function_even_after_the_module_is_imported():
    import keras_vggres.profiling as module

    assert keras_vggres.profile is profile is module.profile and module.plot is plot


def test_compare_parser_and_profile_module_start_without_keras():
    code = ("import sys, keras_vggres.profiling, keras_vggres.cli as c; c.build_parser(); "
            "print(sorted({'keras', 'tensorflow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"
