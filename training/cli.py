"""`shopclip train` and `shopclip evaluate`: training flags are `TrainConfig`'s fields (shopclip.settings),
model flags map onto `ModelConfig`.

Only argparse here; torch and the model load inside the handlers.
"""

from __future__ import annotations

import argparse
import os

from shopclip import settings
from shopclip.model.config import ModelConfig
from shopclip.model.precision import PRECISIONS
from shopclip.training.config import TrainConfig

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
    model_defaults = ModelConfig()
    model = parser.add_argument_group("model")
    model.add_argument("--clip", dest="backbone", default=model_defaults.backbone,
                       help="'shopclip' (USE + n-gram text towers, EfficientNet-Lite0) or "
                            "'open_clip:ARCH=/path/to/checkpoint' for any open_clip model")
    model.add_argument("--text-towers", default=",".join(model_defaults.text_towers),
                       help="comma-separated text towers (shopclip backbone)")
    for flag in ("embed_dim", "e5_max_tokens", "e5_tuned_layers", "ngram_buckets", "ngram_dim", "image_size"):
        model.add_argument("--" + flag.replace("_", "-"), type=int, default=getattr(model_defaults, flag))
    model.add_argument("--tower-precision", choices=PRECISIONS, default=model_defaults.tower_precision,
                       help="what the pretrained text towers compute in (auto: bfloat16 where native)")
    model.add_argument("--no-image-pretrained", dest="image_pretrained", action="store_false",
                       help="random image tower instead of ImageNet weights (tests)")
    run = parser.add_argument_group("training (TrainConfig; each flag is also a SHOPCLIP_* variable)")
    settings.add_arguments(run, TrainConfig)
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
    config = settings.from_sources(TrainConfig, args, os.environ)
    bundle = train(args.data, args.out, model_config, config, resume=args.resume)
    print(f"bundle written to {bundle}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from shopclip.training.evaluate import evaluate

    evaluate(args.bundle, data_dir=args.data, out_dir=args.out, device=args.device)
    return 0
