"""`gradcam`: Grad-CAM overlays of image files, for a registry model or a fine-tuned run."""

from __future__ import annotations

import os

from keras_vggres.cli._args import finite_float, output_folder, positive_int, weights_arg


def cmd_gradcam(args):
    from keras_vggres._checks import check_number
    from keras_vggres.transfer.runs import image_paths
    from keras_vggres.viz.cam import GradCAM
    from keras_vggres.viz.overlays import get_colormap, save_overlay

    check_number("--alpha", args.alpha, low=0.0, high=1.0)
    get_colormap(args.colormap)  # a bad name fails before the model is built
    model, class_names = _load(args)
    cam = GradCAM(model, args.layer, class_names=class_names)
    class_index = None if args.class_ is None else _class_arg(args.class_, cam.class_names)
    paths = image_paths(args.images)
    names = _output_names(paths)
    print(f"Grad-CAM of layer {cam.layer!r} ({model.name}) -> {args.out}")
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        images = _load_images(chunk, model)
        result = cam.explain(images, class_index)
        for i, path in enumerate(chunk):
            target = os.path.join(args.out, names[start + i])
            save_overlay(target, images[i], result.heatmaps[i], args.alpha, args.colormap)
            index = int(result.classes[i])
            label = cam.class_names[index] if cam.class_names else f"class {index}"
            print(f"{path}: {label} (index {index}), p={float(result.outputs[i, index]):.4f}"
                  f" -> {target}")
    return 0


def _load(args):
    """(model with raw RGB 0-255 input, class names or None) from `--model`."""
    if os.path.isdir(args.model) or args.model.endswith(".keras"):
        if args.weights is not None:
            raise ValueError(f"`--weights` applies to registry model names only; --model "
                             f"{args.model!r} is a run folder or .keras file with its weights.")
        from keras_vggres.transfer.runs import load_run

        run = load_run(args.model, require_class_names=False)
        return run.model, run.class_names
    from keras_vggres.registry import get_model

    weights = "imagenet" if args.weights is None else weights_arg(args.weights)
    model = get_model(args.model, weights=weights, include_preprocessing=True)
    if weights is None:
        print("NOTE: weights=None: heatmaps are meaningless until pretrained weights are "
              "loaded.")
    return model, None


def _load_images(paths, model):
    from keras_vggres.images import load_images

    return load_images(paths, model=model)  # the weights' own eval transform


def _class_arg(text, class_names):
    """`--class`: a class name of the model when it is one, else an integer index."""
    if class_names and text in class_names:
        return text
    try:
        return int(text)
    except ValueError:
        return text  # GradCAM reports the unknown name with close matches


def _output_names(paths):
    """`<stem>_gradcam.png` per image; `<stem>_gradcam_<k>.png` where stems repeat."""
    names, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}_gradcam.png" if count == 1 else f"{stem}_gradcam_{count}.png")
    return names


def add_parsers(sub):
    p = sub.add_parser("gradcam", help="Grad-CAM heatmaps over images, one PNG per image")
    p.add_argument("images", nargs="+", metavar="IMAGE|FOLDER")
    p.add_argument("--model", required=True, metavar="MODEL|RUN_DIR|MODEL.keras",
                   help="a registry model name (built with its preprocessing inside), a "
                        "finetune run folder or a .keras file written by keras_vggres")
    p.add_argument("--weights", default=None,
                   help="weights of a registry model: a tag, a weights file or 'none' "
                        "(default: the model's 'imagenet' weights)")
    p.add_argument("--class", dest="class_", default=None, metavar="NAME|INDEX",
                   help="explain this class for every image (default: each image's top-1)")
    p.add_argument("--layer", default=None,
                   help="a stage name (conv4, block4) or layer name (default: the last stage)")
    p.add_argument("--alpha", type=finite_float, default=0.4, help="heatmap opacity in [0, 1]")
    p.add_argument("--colormap", default="jet", help="a matplotlib colormap name")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", type=output_folder, required=True, metavar="DIR",
                   help="folder for the PNGs")
    p.set_defaults(func=cmd_gradcam)

