"""The one `shopclip` entry point: composes the command groups of each subpackage.

Each subpackage owns its commands in its own `cli.py` with a `register(subparsers)` function that
only declares arguments (cheap, no heavy imports) and sets `handler`; handlers import torch, faiss
or lancedb lazily, so `shopclip classify` works on a client-only install (grpcio + protobuf).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from shopclip import __version__, objectstore
from shopclip.errors import ShopclipError, exit_code

# Command groups in help order: (module, what it adds).
COMMAND_MODULES = (
    "shopclip.quickstart",  # quickstart
    "shopclip.training.cli",  # train, evaluate
    "shopclip.indexer.cli",  # index ingest|build|run|status
    "shopclip.registry.cli",  # model list|show|register|promote|rollback
    "shopclip.server.cli",  # serve
    "shopclip.client.cli",  # classify, search, embed, info, feedback
    "shopclip.predlog.cli",  # corrections list|apply
    "shopclip.monitor.cli",  # monitor
    "shopclip.ui.cli",  # ui
)

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopclip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"shopclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an extra that is not installed: its commands are simply absent
            logging.getLogger(__name__).debug("commands of %s unavailable: %s", name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our INFO lines are progress an operator wants; libraries' (open_clip logs model creation on the root
    # logger) are noise unless --verbose.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("shopclip").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        # Commands that read or write s3:// URIs declare the store's flags; the process follows them (and the
        # SHOPCLIP_* variables) until the command returns.
        objectstore.configure(objectstore.options_from(args, os.environ))
        return int(args.handler(args) or 0)
    except ShopclipError as exc:
        if os.environ.get("SHOPCLIP_DEBUG"):
            traceback.print_exc()
        print(f"shopclip {args.command}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        objectstore.configure(None)


if __name__ == "__main__":
    sys.exit(main())
