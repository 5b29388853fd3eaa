"""The rows of `keras_vggres.profile` as a plain table, markdown, JSON or CSV (stdlib only)."""

from __future__ import annotations

import csv
import io
import json

from keras_vggres._checks import check_choice

FORMATS = ("table", "markdown", "json", "csv")
# Every key of a row, in order (JSON and CSV carry them all).
COLUMNS = ("model", "tag", "variant", "image_size", "batch_size", "params", "trainable_params",
           "gmacs", "small_gops", "activation_mib", "latency_ms", "latency_ms_min",
           "latency_ms_max", "throughput_ips", "throughput_ips_min", "throughput_ips_max", "runs",
           "warmup", "top1", "top5", "metrics_source", "published_gflops", "published_params",
           "file_mib", "file_mib_from")


def _number(value, digits):
    return "-" if value is None else f"{value:,.{digits}f}"


def _spread(row, key, digits):
    """`median (min-max)`, or '-' when not measured."""
    if row[key] is None:
        return "-"
    return (f"{row[key]:,.{digits}f} ({row[key + '_min']:,.{digits}f}-"
            f"{row[key + '_max']:,.{digits}f})")


def _file(row):
    if row["file_mib"] is None:
        return "-"
    return _number(row["file_mib"], 1) + ("" if row["file_mib_from"] == "size" else "*")


# (header, cell) of the human-readable formats; JSON / CSV give every column unrounded.
_DISPLAY = (
    ("model", lambda r: r["model"]),
    ("tag", lambda r: r["tag"] or "-"),
    ("variant", lambda r: r["variant"] or "-"),
    ("params M (trainable)",
     lambda r: f"{r['params'] / 1e6:.2f} ({r['trainable_params'] / 1e6:.2f})"),
    ("GMACs {image_size}px", lambda r: _number(r["gmacs"], 3)),
    ("small Gops", lambda r: _number(r["small_gops"], 3)),
    ("file MiB", _file),
    ("train act. MiB b{batch_size}", lambda r: _number(r["activation_mib"], 0)),
    ("latency ms b1 (min-max)", lambda r: _spread(r, "latency_ms", 1)),
    ("img/s b{batch_size} (min-max)", lambda r: _spread(r, "throughput_ips", 1)),
    ("top-1", lambda r: _number(r["top1"], 2)),
    ("top-5", lambda r: _number(r["top5"], 2)),
    ("source", lambda r: r["metrics_source"] or "-"),
)


_TEXT = ("model", "tag", "variant", "source")  # left-aligned; numbers are right-aligned


def _cells(rows):
    """Header (image size and batch filled in from the first row) and body cells."""
    sizes = {"image_size": rows[0]["image_size"], "batch_size": rows[0]["batch_size"]} if rows \
        else {"image_size": "?", "batch_size": "?"}
    header = [name.format(**sizes) for name, _ in _DISPLAY]
    return header, [[cell(row) for _, cell in _DISPLAY] for row in rows]


def _table(rows):
    header, body = _cells(rows)
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths]] + body
    return "\n".join("  ".join(c.ljust(w) if name in _TEXT else c.rjust(w)
                               for name, c, w in zip(header, line, widths)).rstrip()
                     for line in lines)


def _markdown(rows):
    header, body = _cells(rows)
    align = ["---" if name in _TEXT else "--:" for name in header]
    return "\n".join("| " + " | ".join(line) + " |" for line in [header, align] + body)


def _csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def format_rows(rows, fmt="table"):
    """`rows` of `profile()` as text in `fmt`, one of `FORMATS`.

    The table and markdown show the main columns rounded (latency and throughput as median
    with min-max; a file size marked `*` is torchvision's published MiB, otherwise exact bytes);
    JSON and CSV hold every column of `COLUMNS` unrounded.
    """
    check_choice("fmt", fmt, FORMATS)
    if fmt == "json":
        return json.dumps(list(rows), indent=1)
    return {"table": _table, "markdown": _markdown, "csv": _csv}[fmt](list(rows))
