"""`shopclip train` and `shopclip evaluate`: flags map one-to-one onto `TrainConfig` / `ModelConfig`.

Only argparse here; torch and the model load inside the handlers.
"""

from __future__ import annotations

import argparse

from shopclip.errors import InvalidInput
from shopclip.model.config import ModelConfig
from shopclip.model.precision import PRECISIONS
from shopclip.training.config import TrainConfig

# (TrainConfig field, type, help) of the flags that map one-to-one onto it.
TRAIN_FLAGS = (
    ("epochs", int, "most epochs of the selection run (the best validation epoch is kept)"),
    ("patience", int, "stop the selection run after this many epochs without a better validation F1"),
    ("batch_size", int, None),
    ("lr", float, "learning rate of the n-gram tower, projections and head"),
    ("tower_lr", float, "learning rate of pretrained towers when fine-tuned"),
    ("weight_decay", float, None),
    ("clip_weight", float, "weight of open_clip's ClipLoss between text and image"),
    ("fused_weight", float, "weight of the head's cross-entropy on the fused embedding"),
    ("modality_weight", float, "weight of the head's cross-entropy on text-only and image-only embeddings"),
    ("class_weight_power", float, "class weights = (1/frequency)**power; 0 disables them"),
    ("label_smoothing", float, None),
    ("seed", int, "seed of the split and of training"),
    ("sparse_c", "floats", "candidate C of the LinearSVC on TF-IDF (the sparse text view), comma-separated"),
    ("text_view_c", "floats", "candidate C of the logistic regression on each pretrained text tower's output"),
    ("image_view_c", "floats", "candidate C of the logistic regression on the image trunk's output"),
    ("e5_tune_epochs", int, "most epochs of fine-tuning the e5 top (the best validation epoch is kept)"),
    ("e5_tune_lr", float, "learning rate of the tuned e5 layers"),
    ("workers", int, "image-decoding DataLoader workers when towers are fine-tuned"),
)


def _floats(value: str) -> tuple[float, ...]:
    """"0.5,1" -> (0.5, 1.0): the candidates validation chooses from."""
    try:
        parsed = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None
    if not parsed or min(parsed) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {value!r}")
    return parsed


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune the two-tower model on a labelled folder and write a model bundle",
        description="Train on a labelled catalogue folder (challenge X/Y csv + images, or the shared "
                    "rakuten_text.csv + images/ layout). Epochs, the k-NN vote and the weights of Classify's "
                    "views are chosen on a validation split, then the model and views are refitted on every "
                    "labelled product. Towers are frozen and cached on CPU, fine-tuned with bf16 on CUDA, "
                    "unless --freeze-towers/--no-freeze-towers says otherwise.")
    parser.add_argument("--data", required=True, help="labelled catalogue folder")
    parser.add_argument("--out", required=True, help="bundle directory to write (also holds checkpoint.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    model_defaults, defaults = ModelConfig(), TrainConfig()
    model = parser.add_argument_group("model")
    model.add_argument("--clip", dest="backbone", default=model_defaults.backbone,
                       help="'shopclip' (USE + n-gram text towers, EfficientNet-Lite0) or "
                            "'open_clip:ARCH=/path/to/checkpoint' for any open_clip model")
    model.add_argument("--text-towers", default=",".join(model_defaults.text_towers),
                       help="comma-separated text towers (shopclip backbone)")
    for flag in ("embed_dim", "e5_max_tokens", "e5_tuned_layers", "ngram_buckets", "ngram_dim", "image_size"):
        model.add_argument(_flag(flag), type=int, default=getattr(model_defaults, flag))
    model.add_argument("--tower-precision", choices=PRECISIONS, default=model_defaults.tower_precision,
                       help="what the pretrained text towers compute in (auto: bfloat16 where native)")
    model.add_argument("--no-image-pretrained", dest="image_pretrained", action="store_false",
                       help="random image tower instead of ImageNet weights (tests)")
    run = parser.add_argument_group("optimisation (see shopclip.training.config.TrainConfig)")
    for flag, kind, help_text in TRAIN_FLAGS:
        default = getattr(defaults, flag)
        if kind == "floats":
            kind, default = _floats, ",".join(f"{value:g}" for value in default)
        run.add_argument(_flag(flag), type=kind, default=default, help=help_text)
    run.add_argument("--freeze-towers", action=argparse.BooleanOptionalAction, default=defaults.freeze_towers,
                     help="freeze pretrained towers and cache their outputs (default: on CPU only)")
    run.add_argument("--ngram-idf", action=argparse.BooleanOptionalAction, default=defaults.ngram_idf,
                     help="weight the n-gram tower's n-grams by IDF fitted on the training texts")
    run.add_argument("--device", default=defaults.device, help="cpu or cuda (default: cuda when available)")
    run.add_argument("--val-fraction", type=float, default=defaults.split_fractions[0],
                     help="share of each class's products that chooses epochs, k-NN and the views' weights")
    run.add_argument("--test-fraction", type=float, default=defaults.split_fractions[1],
                     help="share held out of everything for `shopclip evaluate` (0: the bundle learns from all)")
    run.add_argument("--refit", action=argparse.BooleanOptionalAction, default=defaults.refit,
                     help="after choosing on validation, train again on training + validation products")
    run.add_argument("--feature-cache", default=defaults.feature_cache,
                     help="folder keeping frozen towers' outputs per product across runs")
    parser.set_defaults(handler=run_train)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a bundle against the TF-IDF baseline, per modality and with k-NN",
        description="One table on the same test products: TF-IDF+LinearSVC, text/image/fused head, k-NN, "
                    "and Classify. Test products are the bundle's test split (train with --test-fraction) or "
                    "--data. Writes eval.json, per_class.txt and confusion_matrix.png.")
    parser.add_argument("--bundle", required=True, help="bundle directory written by `shopclip train`")
    parser.add_argument("--data", default=None,
                        help="labelled folder to test on (default: the bundle's held-out test split)")
    parser.add_argument("--out", default=None, help="output directory (default: BUNDLE/eval)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.set_defaults(handler=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from shopclip.training.train import train

    model_config = ModelConfig(backbone=args.backbone, text_towers=[t for t in args.text_towers.split(",") if t],
                               ngram_buckets=args.ngram_buckets, ngram_dim=args.ngram_dim,
                               image_pretrained=args.image_pretrained, image_size=args.image_size,
                               embed_dim=args.embed_dim, e5_max_tokens=args.e5_max_tokens,
                               e5_tuned_layers=args.e5_tuned_layers, tower_precision=args.tower_precision)
    for name in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise InvalidInput(name.replace("_", "-"), f"must be in [0, 1), got {getattr(args, name)}")
    config = TrainConfig(freeze_towers=args.freeze_towers, device=args.device, ngram_idf=args.ngram_idf,
                         split_fractions=(args.val_fraction, args.test_fraction), refit=args.refit,
                         feature_cache=args.feature_cache, **{flag: getattr(args, flag) for flag, _, _ in TRAIN_FLAGS})
    bundle = train(args.data, args.out, model_config, config, resume=args.resume)
    print(f"bundle written to {bundle}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from shopclip.training.evaluate import evaluate

    evaluate(args.bundle, data_dir=args.data, out_dir=args.out, device=args.device)
    return 0
