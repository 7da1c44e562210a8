"""`shopclip serve`: flags mirror `ServerConfig` (each also read from `SHOPCLIP_<FLAG>`)."""

from __future__ import annotations

import argparse
import os

from shopclip import objectstore
from shopclip.server.config import ServerConfig, add_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the gRPC server (Classify, SearchSimilar, Embed, GetInfo)",
                                   description="Serve a model bundle and the published index over gRPC; "
                                               "SIGTERM drains gracefully.")
    add_arguments(parser)
    objectstore.add_arguments(parser)  # --bundle s3://... (read by the model's loader, shopclip.staging)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from shopclip.server.app import serve  # grpc, torch and faiss load only when serving

    config = ServerConfig.from_sources(vars(args), os.environ)
    asyncio.run(serve(config))
    return 0
