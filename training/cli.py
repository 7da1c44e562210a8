"""`shopclip train` and `shopclip evaluate`: model flags are `ModelConfig`'s fields and training flags
`TrainConfig`'s (shopclip.settings), so each is also a SHOPCLIP_* variable and neither default is restated here.

Only argparse here; torch and the model load inside the handlers.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from shopclip import objectstore, settings
from shopclip.model.config import ModelConfig
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
    parser.add_argument("--data", required=True, help="labelled catalogue folder, or an s3:// prefix (mirrored "
                                                      "into the store cache first)")
    parser.add_argument("--out", required=True, help="bundle directory to write (also holds checkpoint.pt), or an "
                                                     "s3:// prefix: trained in the store cache's stage folder, then "
                                                     "uploaded (without the checkpoint, config.json last)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (for s3:// OUT: "
                                                              "from its stage folder)")
    objectstore.add_arguments(parser)
    settings.add_arguments(parser.add_argument_group("model (ModelConfig; each flag is also a SHOPCLIP_* variable)"),
                           ModelConfig)
    run = parser.add_argument_group("training (TrainConfig; each flag is also a SHOPCLIP_* variable)")
    settings.add_arguments(run, TrainConfig)
    parser.set_defaults(handler=run_train)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a bundle against the TF-IDF baseline, per modality and with k-NN",
        description="One table on the same test products: TF-IDF+LinearSVC, text/image/fused head, k-NN, "
                    "and Classify. Test products are the bundle's test split (train with --test-fraction) or "
                    "--data. Writes eval.json, per_class.txt and confusion_matrix.png.")
    parser.add_argument("--bundle", required=True, help="bundle directory written by `shopclip train`, or its "
                                                        "s3:// URI (read from the store cache, left unchanged)")
    parser.add_argument("--data", default=None,
                        help="labelled folder or s3:// prefix to test on (default: the bundle's held-out test split)")
    parser.add_argument("--out", default=None, help="output directory (default: BUNDLE/eval; ./eval/NAME for an "
                                                    "s3:// bundle)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    objectstore.add_arguments(parser)
    parser.set_defaults(handler=run_evaluate)


def train_configs(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[ModelConfig, TrainConfig]:
    """The run's ModelConfig and TrainConfig: flags, else SHOPCLIP_* variables, else the fields' defaults.
    A bad value raises InvalidInput (InvalidConfig when out of range) naming its field, before torch loads."""
    return settings.from_sources(ModelConfig, args, env), settings.from_sources(TrainConfig, args, env)


def run_train(args: argparse.Namespace) -> int:
    model_config, config = train_configs(args, os.environ)
    from shopclip.staging import BUNDLE_MARKER, local_copy, staged_output
    from shopclip.training.train import CHECKPOINT_FILE, train

    data = local_copy(args.data)
    with staged_output(args.out, skip=(CHECKPOINT_FILE,), last=(BUNDLE_MARKER,), fresh=not args.resume) as out:
        bundle = train(data, out, model_config, config, resume=args.resume,
                       source=args.data if objectstore.is_s3(args.data) else None)
    print(f"bundle written to {args.out if objectstore.is_s3(args.out) else bundle}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from shopclip.training.evaluate import evaluate

    evaluate(args.bundle, data_dir=args.data, out_dir=args.out, device=args.device)
    return 0
