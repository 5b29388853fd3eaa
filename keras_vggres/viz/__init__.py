"""Seeing what a model does: Grad-CAM heatmaps, overlays on images, training-report charts.

Re-exports only, resolved lazily: `keras_vggres.viz.overlay` and the charts need neither Keras
nor TensorFlow, and matplotlib stays optional (overlays fall back to a built-in "jet";
`transfer.report` falls back to plain Pillow charts).
"""

from keras_vggres._lazy import lazy_exports

_EXPORTS = {
    "keras_vggres.viz.cam": ("GradCAM", "GradCAMResult", "gradcam"),
    "keras_vggres.viz.overlays": ("colorize", "overlay", "save_overlay"),
    "keras_vggres.viz.plots": ("confusion_figure", "curves_figure", "save_figure"),
}
__all__, __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
