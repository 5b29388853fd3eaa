"""The plain charts of a run report, drawn with Pillow's ImageDraw: the fallback of
`viz.plots` when matplotlib is not installed, so a run always gets its PNGs."""

from __future__ import annotations

import numpy as np


def _canvas(width, height):
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    return img, ImageDraw.Draw(img), ImageFont.load_default()


def confusion_image(cm, class_names, *, title="Confusion matrix"):
    """Draw `cm` (rows true, columns predicted; colour = row share) with counts in the cells."""
    n = len(class_names)
    cell = max(28, min(60, 480 // max(n, 1)))
    labels = [f"{i}: {name[:18]}" for i, name in enumerate(class_names)]
    left, top = 16 + 7 * max(len(s) for s in labels), 56
    img, draw, font = _canvas(left + n * cell + 20, top + n * cell + 40)
    draw.text((10, 8), f"{title} (rows: true, columns: predicted)", fill="black", font=font)
    totals = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    for i in range(n):
        draw.text((8, top + i * cell + cell // 2 - 5), labels[i], fill="black", font=font)
        draw.text((left + i * cell + cell // 2 - 4, top - 16), str(i), fill="black", font=font)
        for j in range(n):
            share = cm[i, j] / totals[i, 0]
            colour = tuple(int(255 - share * (255 - c)) for c in (31, 84, 160))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=colour, outline="gray")
            draw.text((box[0] + 4, box[1] + cell // 2 - 5), str(int(cm[i, j])),
                      fill="white" if share > 0.5 else "black", font=font)
    return img


def curves_image(rows):
    """Loss and accuracy per epoch (train solid, validation dashed); grey lines and labels
    mark where each phase starts."""
    panels = (("loss", "val_loss"), ("accuracy", "val_accuracy"))
    width, height, pad = 420, 280, 44
    img, draw, font = _canvas(width * len(panels), height)
    epochs = [r["epoch"] for r in rows]
    starts = [(r["epoch"], r["phase"]) for i, r in enumerate(rows)
              if i == 0 or r["phase"] != rows[i - 1]["phase"]]
    for k, keys in enumerate(panels):
        x0, box = k * width, (k * width + pad, 24, (k + 1) * width - 14, height - pad)
        draw.rectangle(box, outline="black")
        draw.text((x0 + pad, 6), keys[0], fill="black", font=font)
        values = [r[key] for r in rows for key in keys if r.get(key) is not None]
        if not epochs or not values:
            continue
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1.0
        e_lo, e_hi = min(epochs), max(max(epochs), min(epochs) + 1)

        def xy(epoch, value, box=box, lo=lo, hi=hi, e_lo=e_lo, e_hi=e_hi):
            return (box[0] + (epoch - e_lo) / (e_hi - e_lo) * (box[2] - box[0]),
                    box[3] - (value - lo) / (hi - lo) * (box[3] - box[1]))

        for i, (start, phase) in enumerate(starts):
            x = xy(start - 0.5, lo)[0] if i else box[0]
            if i:
                draw.line((x, box[1], x, box[3]), fill=(170, 170, 170))
            draw.text((x + 4, box[1] + 2), str(phase), fill=(120, 120, 120), font=font)
        for key, colour, dashed in ((keys[0], (31, 84, 160), False),
                                    (keys[1], (214, 96, 32), True)):
            points = [xy(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            _polyline(draw, points, colour, dashed)
        draw.text((x0 + 4, box[1]), f"{hi:.3g}", fill="black", font=font)
        draw.text((x0 + 4, box[3] - 10), f"{lo:.3g}", fill="black", font=font)
        draw.text((box[0], box[3] + 4), f"epoch {e_lo}", fill="black", font=font)
        draw.text((box[2] - 50, box[3] + 4), f"epoch {max(epochs)}", fill="black", font=font)
        draw.text((box[0], box[3] + 20), "train (solid)   validation (dashed)", fill="black",
                  font=font)
    return img


def _polyline(draw, points, colour, dashed):
    for p in points:
        draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
    for a, b in zip(points, points[1:]):
        if not dashed:
            draw.line((a, b), fill=colour, width=2)
            continue
        steps = 12
        for s in range(0, steps, 2):
            t0, t1 = s / steps, (s + 1) / steps
            draw.line(((a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                       (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)),
                      fill=colour, width=2)
