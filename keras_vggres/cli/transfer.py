"""`finetune` (an image folder -> a run folder) and `extract` (images -> embeddings)."""

from __future__ import annotations

import os

from keras_vggres.cli._args import (finite_float, optional_int, optional_number, output_file,
                                    output_folder, positive_int, weights_arg)


def cmd_finetune(args):
    from keras_vggres.transfer.finetune import finetune

    result = finetune(
        args.data_dir, model=args.model, weights=args.weights, image_size=args.image_size,
        batch_size=args.batch_size,
        epochs_head=args.epochs if args.epochs_head is None else args.epochs_head,
        epochs_finetune=args.epochs if args.epochs_finetune is None else args.epochs_finetune,
        unfreeze=args.unfreeze, bn=args.bn, lr=args.lr,
        finetune_lr=args.finetune_lr, warmup_epochs=args.warmup_epochs, dropout=args.dropout,
        augment=args.augment, validation_split=args.validation_split, seed=args.seed,
        out_dir=args.out, early_stopping_patience=args.patience, strategy=args.strategy,
        precision=args.precision, jit_compile=True if args.jit else "auto",
        verbose=0 if args.quiet else "auto", optimizer=args.optimizer,
        label_smoothing=args.label_smoothing, class_weights=args.class_weights,
        cache=args.cache, restart=args.restart)
    if args.quiet:  # finetune prints the hygiene report and the result unless verbose=0
        print(result)
    return 0


def cmd_extract(args):
    from keras_vggres.transfer.extract import extract_features

    source = args.source[0] if len(args.source) == 1 and os.path.isdir(args.source[0]) \
        else args.source
    features, paths, _, class_names = extract_features(
        source, model=args.model, weights=args.weights, image_size=args.image_size,
        pooling=args.pooling, batch_size=args.batch_size, out=args.out, strategy=args.strategy,
        verbose=0 if args.quiet else "auto")
    print(f"{features.shape[0]} embeddings of size {features.shape[1]} from {args.model} "
          f"(weights={args.weights}, {len(class_names)} classes) -> {args.out}")
    return 0


def add_parsers(sub):
    from keras_vggres._checks import (AUGMENTATIONS, BN_POLICIES, OPTIMIZERS, PRECISIONS,
                                      STRATEGY_KINDS)

    p = sub.add_parser("finetune", help="fine-tune a model on an image folder and export it")
    p.add_argument("data_dir", help="root/<class>/*.jpg, or root/train/... + root/val/... "
                   "(+ root/test/..., evaluated once at the end)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--weights", type=weights_arg, default="imagenet",
                   help="a tag, a weights file (.h5, .weights.h5, .keras, .pth), or 'none'")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5,
                   help="epochs of each phase (head, then fine-tuning) unless "
                        "--epochs-head / --epochs-finetune say otherwise")
    p.add_argument("--epochs-head", type=int, default=None)
    p.add_argument("--epochs-finetune", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32, help="per replica")
    p.add_argument("--out", type=output_folder, default=None,
                   help="run folder (the same one resumes a run)")
    p.add_argument("--restart", action="store_true",
                   help="start the run in --out over (after the settings or data changed)")
    p.add_argument("--unfreeze", default=None, help="first stage to fine-tune, or 'all'")
    p.add_argument("--bn", choices=BN_POLICIES, default="frozen",
                   help="BatchNorm of the unfrozen stages: frozen (inference mode) or train")
    p.add_argument("--lr", type=finite_float, default=1e-3, help="head learning rate")
    p.add_argument("--finetune-lr", type=finite_float, default=None,
                   help="peak fine-tuning learning rate (default lr / 10)")
    p.add_argument("--warmup-epochs", type=finite_float, default=1.0)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--label-smoothing", type=finite_float, default=0.0)
    p.add_argument("--no-class-weights", dest="class_weights", action="store_false",
                   help="do not weight classes by inverse frequency")
    p.add_argument("--dropout", type=finite_float, default=0.2)
    p.add_argument("--augment", nargs="?", const="basic", default=False,
                   choices=[a for a in AUGMENTATIONS if a],
                   help="training augmentation (bare --augment: basic)")
    p.add_argument("--cache", choices=("memory", "disk"), default=None,
                   help="cache decoded images (default: stream from disk)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--patience", type=optional_int, default=3,
                   help="early-stopping patience in epochs, or 'none'")
    p.add_argument("--validation-split", type=optional_number, default=0.2,
                   help="held-out fraction, or 'none'")
    p.add_argument("--strategy", choices=STRATEGY_KINDS, default=None,
                   help="a tf.distribute strategy (default: none, as finetune(strategy=None))")
    p.add_argument("--precision", choices=PRECISIONS, default="float32")
    p.add_argument("--jit", action="store_true", help="force XLA (jit_compile=True)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, only the result")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("extract", help="pooled embeddings of images -> a .npz file")
    p.add_argument("source", nargs="+", metavar="DATA_DIR|IMAGES",
                   help="a folder (class sub-folders or images) or image files")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--weights", type=weights_arg, default="imagenet",
                   help="a tag, a weights file (.h5, .weights.h5, .keras, .pth), or 'none'")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--pooling", choices=("avg", "max"), default="avg")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", type=output_file, default="feats.npz")
    p.add_argument("--strategy", choices=STRATEGY_KINDS, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_extract)
