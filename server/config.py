"""Typed server configuration, read in one place: CLI flags, then `SHOPCLIP_*` environment variables, then defaults.

Every field of `ServerConfig` is a `serve` flag (`--max-batch`) and an environment variable
(`SHOPCLIP_MAX_BATCH`), generated from the dataclass so the three can never drift apart.
This module imports neither grpc nor torch: the root CLI imports it to declare `serve`'s flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shopclip.errors import InvalidInput
from shopclip.input_policy import DEFAULT_LIMITS, ProductLimits

ENV_PREFIX = "SHOPCLIP_"


def _opt(default: Any, help: str, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"help": help})


@dataclass(frozen=True)
class ServerConfig:
    bundle: str = _opt("", "model bundle directory, or fake:dim=..,classes=.. (test double)")
    index_root: str | None = _opt(None, "published index root; unset serves the linear head only")
    host: str = _opt("[::]", "interface to bind")
    port: int = _opt(50051, "gRPC port (0 picks a free one)")
    device: str | None = _opt(None, "torch device for the model (default: CUDA when available)")
    forward_workers: int = _opt(1, "forward passes that run at once, each on its own micro-batch; with "
                                   "--torch-threads 1 and one worker per core a small CPU answers a little more "
                                   "under load and a lone request more slowly (measure with bench/serve.py)")
    torch_threads: int | None = _opt(None, "intra-op CPU threads of the forward pass and FAISS searches "
                                           "(default: every core this process may use)")
    max_batch: int = _opt(32, "most products in one forward pass")
    max_wait_ms: float = _opt(1.0, "how long a forward waits for more requests to fill its batch")
    queue_size: int = _opt(1024, "products waiting for a forward before RESOURCE_EXHAUSTED")
    abstain_threshold: float = _opt(0.5, "Classify abstains when the top probability is below this")
    max_image_bytes: int = _opt(DEFAULT_LIMITS.max_image_bytes, "largest accepted encoded image")
    max_image_pixels: int = _opt(DEFAULT_LIMITS.max_image_pixels, "largest accepted image area (decompression-bomb guard)")
    max_designation_chars: int = _opt(DEFAULT_LIMITS.max_designation_chars, "longest accepted designation")
    max_description_chars: int = _opt(DEFAULT_LIMITS.max_description_chars, "longest accepted description")
    max_classify_top_k: int = _opt(50, "largest Classify top_k")
    max_search_top_k: int = _opt(100, "largest SearchSimilar top_k")
    batch_limit: int = _opt(256, "most products in one ClassifyBatch or Embed call")
    max_message_bytes: int = _opt(64 * 1024 * 1024, "largest request message gRPC accepts (must fit an image "
                                                     "of --max-image-bytes, so a too-big one gets a clear error)")
    tls_cert: str | None = _opt(None, "PEM certificate chain; with --tls-key enables TLS")
    tls_key: str | None = _opt(None, "PEM private key of --tls-cert")
    token: str | None = _opt(None, "bearer token required in `authorization` metadata (health stays open); "
                                   "prefer the environment variable, flags show in `ps`", secret=True)
    metrics_port: int | None = _opt(None, "Prometheus metrics HTTP port (unset: no metrics endpoint)")
    poll_interval_s: float = _opt(5.0, "how often to look for a newly published index")
    drain_grace_s: float = _opt(10.0, "on SIGTERM, how long in-flight requests may take to finish")

    def __post_init__(self) -> None:
        if not self.bundle:
            raise InvalidInput("bundle", f"required: pass --bundle or set {ENV_PREFIX}BUNDLE")
        self.product_limits  # noqa: B018 - validates the four product limits
        for name in ("forward_workers", "max_batch", "queue_size", "max_classify_top_k", "max_search_top_k",
                     "batch_limit", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise InvalidInput(name, f"must be >= 1, got {getattr(self, name)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise InvalidInput("torch_threads", f"must be >= 1, got {self.torch_threads}")
        for name in ("max_wait_ms", "poll_interval_s", "drain_grace_s"):
            if getattr(self, name) < 0:
                raise InvalidInput(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.abstain_threshold <= 1.0:
            raise InvalidInput("abstain_threshold", f"must be in [0, 1], got {self.abstain_threshold}")
        if not 0 <= self.port <= 65535:
            raise InvalidInput("port", f"must be in 0..65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("tls_cert", "TLS needs both --tls-cert and --tls-key")

    @property
    def product_limits(self) -> ProductLimits:
        """The input policy requests are checked and images decoded under (ingest defaults to the same)."""
        return ProductLimits(max_designation_chars=self.max_designation_chars,
                             max_description_chars=self.max_description_chars,
                             max_image_bytes=self.max_image_bytes, max_image_pixels=self.max_image_pixels)

    @property
    def forward_threads(self) -> int:
        """`torch_threads`, or every core this process may run on (see `usable_cores`)."""
        if self.torch_threads is not None:
            return self.torch_threads
        return usable_cores()

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], env: Mapping[str, str]) -> "ServerConfig":
        """Flag values win over `SHOPCLIP_<FIELD>` environment variables, which win over defaults."""
        values: dict[str, Any] = {}
        for name, kind in _field_types().items():
            if flags.get(name) is not None:
                values[name] = flags[name]
            elif (raw := env.get(ENV_PREFIX + name.upper())) not in (None, ""):
                values[name] = _parse(name, kind, raw)
        return cls(**values)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (a container's cpuset, `taskset`), not the machine's count,
    so a server pinned to 1 of 16 cores does not start 16 torch threads that fight over it."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `ServerConfig` field; defaults stay None so `from_sources` can tell 'unset' apart."""
    for f in dataclasses.fields(ServerConfig):
        kind = _field_types()[f.name]
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None, metavar=f.name.upper(),
                            help=f"{f.metadata['help']} (env {ENV_PREFIX}{f.name.upper()}, default {f.default!r})")


def _field_types() -> dict[str, type]:
    """Field name -> the scalar type its text converts to (`int | None` -> int)."""
    hints = typing.get_type_hints(ServerConfig)
    out = {}
    for f in dataclasses.fields(ServerConfig):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        out[f.name] = hint
    return out


def _parse(name: str, kind: type, raw: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInput(name, f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from None
