"""`shopclip ui`: the administrators' console, a Streamlit server on --ui-port running ui/app.py.

The options (`UiConfig`) are handed to the Streamlit process as SHOPCLIP_* variables, where the app reads them back;
so `SHOPCLIP_TARGET=... shopclip ui` and `shopclip ui --target ...` are the same thing."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shopclip import settings
from shopclip.input_policy import ProductLimits
from shopclip.ui.config import UiConfig

APP = Path(__file__).resolve().parent / "app.py"
UPLOAD_LIMIT_MB = -(-ProductLimits().max_image_bytes // 2**20)
"""The browser refuses an image larger than the server would take (--max-image-bytes' default)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ui", help="the catalogue administrators' web console (Streamlit)",
                                   description="Serve the console: classify and search through the server, work "
                                               "through the review queue, see the catalogue, the models and the "
                                               "monitoring. No model is loaded in this process.")
    settings.add_arguments(parser, UiConfig)  # s3:// drops: the usual AWS_* variables reach the app unchanged
    parser.set_defaults(handler=run_ui)


def streamlit_command(config: UiConfig) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", config.ui_host, "--server.port", str(config.ui_port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
            "--server.maxUploadSize", str(UPLOAD_LIMIT_MB)]


def run_ui(args: argparse.Namespace) -> int:
    config = settings.from_sources(UiConfig, args, os.environ)
    env = {**os.environ, **settings.to_env(config)}
    print(f"shopclip console on http://{config.ui_host}:{config.ui_port} (server {config.target})", flush=True)
    command = streamlit_command(config)
    os.execve(command[0], command, env)  # Streamlit becomes this process: signals (SIGTERM, Ctrl-C) reach it
    return 0  # not reached
