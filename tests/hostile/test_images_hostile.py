"""Hostile and unlucky image folders: size bombs, dangling links, loops, odd names, files that
vanish mid-run. Each ends as one clear error or a skipped file, never a crash or a blow-up."""

import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from keras_vggres import cli
from keras_vggres.images import MAX_ASPECT_RATIO, ImageTooLargeError, load_images
from keras_vggres.transfer import hygiene
from keras_vggres.transfer.toydata import make_toy_dataset

RSS_LIMIT_MB = 1024


def _strip_png(path, width, height):
    """A tiny PNG (a few hundred bytes) of width x height pixels."""
    Image.new("L", (width, height), 128).save(path, optimize=True)
    return path


def _peak_rss_mb(code, *args):
    """Run `code` in a fresh process; return (returncode, stderr, peak RSS in MB)."""
    script = textwrap.dedent(code) + textwrap.dedent("""
        with open("/proc/self/status") as f:
            peak = [l for l in f if l.startswith("VmHWM")][0].split()[1]
        print("PEAK_KB", peak)
    """)
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    peak = [line for line in proc.stdout.splitlines() if line.startswith("PEAK_KB")]
    return proc.returncode, proc.stdout + proc.stderr, int(peak[0].split()[1]) / 1024 if peak \
        else None


def test_a_thin_strip_is_refused_before_decoding(tmp_path):
    path = _strip_png(tmp_path / "strip.png", 100_000, 1)
    assert path.stat().st_size < 2000
    with pytest.raises(ImageTooLargeError, match=r"strip\.png.*aspect ratio"):
        load_images(path, size=64)
    rc, out, peak = _peak_rss_mb("""
        import sys
        from keras_vggres.images import load_images, ImageTooLargeError
        try:
            load_images(sys.argv[1], size=64)
        except ImageTooLargeError as err:
            print("REFUSED", err)
    """, path)
    assert rc == 0 and "REFUSED" in out and peak < 300, out[-2000:]


def test_a_huge_declared_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (20_000, 20_000)).save(path, optimize=True)  # 400 MP, a small file
    with pytest.raises(ImageTooLargeError, match=r"huge\.png.*MAX_PIXELS"):
        load_images(path, size=64)


def test_the_pipeline_refuses_the_strip_too_with_a_clear_error(tmp_path):
    """The tf.data path decodes with the same function: same limits, one clear error."""
    data = make_toy_dataset(tmp_path / "data", classes=2, per_class=3, size=40, broken=False)
    folder = os.path.join(data.root, data.class_names[0])
    rc, out, peak = _peak_rss_mb("""
        import sys
        from PIL import Image
        from keras_vggres.transfer.datasets import from_folder, data_errors
        data = from_folder(sys.argv[1], image_size=64, batch_size=2)   # scanned: all fine
        Image.new("L", (100000, 1), 128).save(sys.argv[2], format="PNG")  # swapped after
        try:
            with data_errors():
                for _ in data.train:
                    pass
        except ValueError as err:
            print("REFUSED", type(err).__name__, err)
    """, data.root, os.path.join(folder, sorted(os.listdir(folder))[0]))
    assert rc == 0 and "REFUSED ImageDataError" in out and "aspect ratio" in out, out[-3000:]
    assert peak < RSS_LIMIT_MB


def test_scan_skips_bombs_dangling_links_and_loops(tmp_path):
    make_toy_dataset(tmp_path / "data", classes=2, per_class=3, size=40, broken=False)
    cls = tmp_path / "data" / "blue_squares"
    _strip_png(cls / "strip.png", 10 * MAX_ASPECT_RATIO + 10, 10)
    os.symlink(tmp_path / "nowhere.jpg", cls / "dangling.jpg")
    os.symlink(cls, cls / "loop")  # a folder link to itself
    report = hygiene.scan_folder(tmp_path / "data")
    codes = {os.path.basename(i.path): i.code for i in report.skipped}
    assert codes == {"strip.png": "too_large", "dangling.jpg": "unreadable"}
    assert report.counts["all"]["blue_squares"] == 3


def test_odd_names_are_reported_safely(tmp_path):
    make_toy_dataset(tmp_path / "data", classes=2, per_class=3, size=40, broken=False)
    odd_class = tmp_path / "data" / "new\nline"
    odd_class.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (i * 90, 0, 0)).save(odd_class / f"img{i}.png")
    undecodable = os.path.join(os.fsencode(tmp_path / "data" / "blue_squares"), b"bad\xff.png")
    with open(undecodable, "wb") as f:
        f.write(b"not an image")
    report = hygiene.scan_folder(tmp_path / "data")
    text = str(report)
    assert "new\\nline" in text and "\nline" not in text.replace("\\n", "")
    assert any("bad" in i.path for i in report.skipped)
    report.save(tmp_path / "hygiene.json")  # writes despite the surrogate in a file name
    assert "bad\\udcff.png" in (tmp_path / "hygiene.txt").read_text(encoding="utf-8")


def test_a_file_deleted_after_the_scan_stops_finetune_with_one_line(tmp_path, capsys):
    data = make_toy_dataset(tmp_path / "data", classes=2, per_class=6, size=40, broken=False)
    doomed = os.path.join(data.root, data.class_names[1], "doomed.png")
    Image.new("RGB", (40, 40), (0, 200, 0)).save(doomed)
    code = textwrap.dedent("""
        import os, sys
        from keras_vggres.transfer import hygiene
        real = hygiene.scan_folder

        def scan_then_delete(*args, **kwargs):
            report = real(*args, **kwargs)
            os.remove(sys.argv[2])
            return report
        import keras_vggres.transfer.finetune
        # the package's `finetune` function shadows its module: patch the module itself
        sys.modules["keras_vggres.transfer.finetune"].scan_folder = scan_then_delete
        from keras_vggres import cli
        sys.exit(cli.main(["finetune", sys.argv[1], "--model", "resnet18", "--weights", "none",
                           "--image-size", "32", "--batch-size", "4", "--epochs", "1",
                           "--out", sys.argv[3], "--quiet", "--augment", "flip"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code, data.root, doomed, tmp_path / "run"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "keras-vggres finetune: error" in line]
    assert len(errors) == 1 and "doomed.png" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_classify_reports_a_decompression_bomb_in_one_line(tmp_path, capsys):
    path = tmp_path / "bomb.png"
    Image.new("1", (15_000, 15_000)).save(path, optimize=True)
    assert cli.main(["classify", str(path), "--model", "resnet18", "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bomb.png" in err and "MAX_PIXELS" in err
