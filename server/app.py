"""Server assembly and lifecycle: `create_server(config) -> (server, port)`, and `serve(config)` for the CLI.

`create_server` loads the model (off the event loop), opens the published index when one exists, wires
servicers, health, reflection, interceptors, batcher, index watcher and metrics, binds and starts.
Health reports SERVING only once the model and (when an index root is configured) an index are loaded;
the health name `shopclip.index` also says whether the published index still backs the one served (why not,
in the Check's trailing metadata);
`stop` flips it to NOT_SERVING first so load balancers drain the server, then lets in-flight calls finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shopclip.errors import InvalidInput
from shopclip.predictions import PredictionLog, open_prediction_log
from shopclip.indexer.api import PublishedIndex
from shopclip.model import Embedder, load_embedder
from shopclip.server.auth import BearerTokenInterceptor, server_credentials
from shopclip.server.batching import MicroBatcher
from shopclip.server.config import ServerConfig, usable_cores
from shopclip.server.engine import Engine, Job, Outcome
from shopclip.server.errors import ErrorTableInterceptor
from shopclip.server.image_words import ImageWordsReader
from shopclip.server.index_watch import IndexSource, IndexWatcher, ModelLoader, PublishedIndexSource
from shopclip.server.metrics import ServerMetrics
from shopclip.server.recording import PredictionRecorder
from shopclip.server.servicer import (ClassificationServicer, EmbeddingServicer, FeedbackServicer, InfoServicer,
                                      RequestLimits, SearchServicer)
from shopclip.products import ProductInput
from shopclip.v1 import (classification_pb2, classification_pb2_grpc, embedding_pb2, embedding_pb2_grpc,
                         feedback_pb2, feedback_pb2_grpc, info_pb2, info_pb2_grpc, search_pb2, search_pb2_grpc)

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
APP_SERVICES = tuple(module.DESCRIPTOR.services_by_name[name].full_name for module, name in (
    (classification_pb2, "ClassificationService"), (search_pb2, "SearchService"),
    (embedding_pb2, "EmbeddingService"), (info_pb2, "InfoService"), (feedback_pb2, "FeedbackService")))
SERVICE_NAMES = APP_SERVICES + (HEALTH_SERVICE, reflection.SERVICE_NAME)
"""Every service this server exposes: health statuses and reflection are fed from this one tuple."""
INDEX_HEALTH_SERVICE = "shopclip.index"
"""A health-only name (not a gRPC service) for the published index behind the served one: NOT_SERVING while no
index is loaded, or while the loaded one is no longer backed by a loadable published version (index root
removed, its files changed, a newer version that fails to load). The services stay SERVING meanwhile: they
answer from the copy in memory, so load balancers keep the server; monitoring watches this name."""
HEALTH_REASON_KEY = "shopclip-reason"
"""Trailing metadata of a health Check: why the service checked is NOT_SERVING (the protocol has no field)."""


class HealthWithReasons(health.aio.HealthServicer):
    """grpc.health.v1 whose Check also says why a service is not serving, in `HEALTH_REASON_KEY` trailers."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, str] = {}

    async def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 - the gRPC method name
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        reason = self.reasons.get(request.service)
        if reason:  # metadata values are printable ASCII on one line
            printable = reason.encode("ascii", "backslashreplace").decode().replace("\n", " ")[:2000]
            context.set_trailing_metadata(((HEALTH_REASON_KEY, printable),))
        return await super().Check(request, context)


class ShopclipServer:
    """A started grpc.aio server plus what runs beside it (batcher, index watcher, metrics endpoint, the
    prediction log it opened).

    Mirrors `grpc.aio.Server`'s lifecycle methods: `start` (idempotent), `stop(grace)`, `wait_for_termination`.
    """

    def __init__(self, config: ServerConfig, grpc_server: grpc.aio.Server, engine: Engine,
                 batcher: MicroBatcher[Job, Outcome], forward_executor: ThreadPoolExecutor,
                 health_servicer: HealthWithReasons, metrics: ServerMetrics, image_words: ImageWordsReader) -> None:
        self.config = config
        self.grpc_server = grpc_server
        self.engine = engine
        self.batcher = batcher
        self.watcher: IndexWatcher | None = None
        self._forward_executor = forward_executor
        self._image_words = image_words
        self.health = health_servicer
        self.metrics = metrics
        self.port = 0
        self.metrics_port: int | None = None
        self.owned_log: PredictionLog | None = None
        """The prediction log `create_server` opened from the config (closed by `stop`; one passed in is not)."""
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.batcher.start()
        await self.grpc_server.start()
        if self.watcher is not None:
            self.watcher.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(_metrics_host(self.config.host), self.config.metrics_port)
        await self.update_health()

    async def update_health(self) -> None:
        """SERVING for every service once the engine is ready, and `INDEX_HEALTH_SERVICE` with the index watcher's
        problem as its reason (no-op once draining)."""
        status = health_pb2.HealthCheckResponse.SERVING if self.engine.ready \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("",) + SERVICE_NAMES:
            await self.health.set(name, status)
        if self.watcher is not None:
            problem = self.watcher.problem or (None if self.engine.index is not None
                                               else "no published index is loaded yet")
            self.health.reasons[INDEX_HEALTH_SERVICE] = problem or ""
            await self.health.set(INDEX_HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING if problem
                                  else health_pb2.HealthCheckResponse.SERVING)
        self.metrics.ready.set(1 if self.engine.ready else 0)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish within `grace`, then stop the rest."""
        await self.health.enter_graceful_shutdown()
        self.metrics.ready.set(0)
        await self.grpc_server.stop(grace)
        if self.watcher is not None:
            await self.watcher.stop()
        await self.batcher.stop()
        self._forward_executor.shutdown(wait=False)
        self._image_words.close()
        if self.owned_log is not None:  # after the batcher: every answered product has been handed to it
            await asyncio.to_thread(self.owned_log.close)
        self.metrics.close()

    async def on_index_swapped(self, index: PublishedIndex) -> None:
        self.metrics.set_model(self.engine.info())
        self.metrics.set_index(index.version, len(index))
        await self.update_health()

    async def on_index_problem(self, problem: str | None) -> None:
        await self.update_health()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


def set_forward_threads(threads: int) -> None:
    """Process-wide: torch's intra-op pool (the forward) and FAISS's OpenMP pool (searches) get `threads`.
    BLAS (numpy's flat-index search) runs on the calling thread: OpenBLAS's pthreads spin after every call,
    and beside torch's OpenMP threads a batch-1 forward with its search took 80 ms instead of 4.6 (2 cores)."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    # First, so that what follows wins: FAISS's OpenBLAS shares FAISS's OpenMP runtime, and torch.set_num_threads
    # also sets MKL's count where torch links MKL as a shared library (which threadpoolctl would limit too).
    threadpool_limits(limits=1, user_api="blas")
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    log.info("forward threads: %d (%d usable cores of %s)", threads, usable_cores(), os.cpu_count())


async def create_server(config: ServerConfig, index_source: IndexSource | None = None,
                        prediction_log: PredictionLog | None = None) -> tuple[ShopclipServer, int]:
    """Build, bind and start a server; returns it and the bound port (config.port 0 picks a free one).

    `index_source` replaces the published indexes under `config.index_root` (tests use an in-memory one);
    `prediction_log` replaces the one `config.prediction_log` names (the caller then closes it).
    """
    # The model is loaded on the thread that will run it: torch keeps an OpenMP thread team per calling thread,
    # and a second team (loading elsewhere) made every forward ~50% slower on 2 cores (bench/serve.py).
    forward_executor = ThreadPoolExecutor(config.forward_workers, thread_name_prefix="shopclip-forward")
    embedder = await asyncio.get_running_loop().run_in_executor(forward_executor, load_model, config.bundle, config)
    if index_source is None and config.index_root is not None:
        index_source = PublishedIndexSource(config.index_root)
    engine = Engine(embedder, abstain_threshold=config.abstain_threshold, index_required=index_source is not None)
    metrics = ServerMetrics()
    metrics.set_model(engine.info())
    batcher: MicroBatcher[Job, Outcome] = MicroBatcher(
        engine.forward, executor=forward_executor,
        max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000, queue_size=config.queue_size,
        on_batch=metrics.batch_size.observe, concurrency=config.forward_workers)
    metrics.track_queue_depth(lambda: batcher.depth)
    metrics.queue_capacity.set(config.queue_size)
    owned_log = None
    if prediction_log is None and config.prediction_log:
        # Off the event loop: it may try the database once (it starts even when that is down, and spills).
        prediction_log = owned_log = await asyncio.to_thread(open_prediction_log, config.prediction_log,
                                                             config.prediction_log_spill)
    if prediction_log is not None:
        metrics.register(prediction_log.collectors())
    recorder = PredictionRecorder(metrics, prediction_log, keep_embeddings=config.prediction_log_embeddings)
    grpc_server = _grpc_server(config, metrics)
    health_servicer = HealthWithReasons()
    image_words = ImageWordsReader(engine, config.image_words_workers, config.queue_size)
    _add_servicers(grpc_server, engine, batcher, _limits(config), health_servicer, recorder, prediction_log,
                   metrics, image_words)

    server = ShopclipServer(config, grpc_server, engine, batcher, forward_executor, health_servicer, metrics,
                            image_words)
    server.owned_log = owned_log
    if index_source is not None:
        server.watcher = IndexWatcher(index_source, engine, config.poll_interval_s, on_swap=server.on_index_swapped,
                                      on_problem=server.on_index_problem,
                                      load_model=_model_loader(config) if config.follow_model
                                      else None)
        await _load_first_index(server.watcher)
    try:
        server.port = _bind(grpc_server, config)
    except InvalidInput:
        if owned_log is not None:  # a server that never started must not leave its log's writer running
            await asyncio.to_thread(owned_log.close)
        raise
    await server.start()
    log.info("serving %s on %s:%d (tls=%s, auth=%s, index=%s)", embedder.fingerprint, config.host, server.port,
             config.tls, bool(config.token), engine.versions().index_version or "none")
    return server, server.port


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully. Owns the process, so it sizes the thread pools."""
    set_forward_threads(config.forward_threads)
    server, port = await create_server(config)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    log.info("listening on port %d; SIGTERM drains within %.0fs", port, config.drain_grace_s)
    try:
        await stop_requested.wait()
        log.info("draining")
    finally:
        await server.stop(config.drain_grace_s)
    log.info("stopped")


def _add_servicers(grpc_server: grpc.aio.Server, engine: Engine, batcher: MicroBatcher[Job, Outcome],
                   limits: RequestLimits, health_servicer: health.aio.HealthServicer, recorder: PredictionRecorder,
                   prediction_log: PredictionLog | None, metrics: ServerMetrics, image_words: ImageWordsReader) -> None:
    classification_pb2_grpc.add_ClassificationServiceServicer_to_server(
        ClassificationServicer(engine, batcher, limits, recorder, image_words), grpc_server)
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(
        FeedbackServicer(engine, batcher, limits, prediction_log, metrics), grpc_server)
    search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(engine, batcher, limits), grpc_server)
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(engine, batcher, limits), grpc_server)
    info_pb2_grpc.add_InfoServiceServicer_to_server(InfoServicer(engine, batcher, limits), grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(SERVICE_NAMES, grpc_server)


def _blank_png() -> bytes:
    """A small grey-on-white image in memory, for the warm-up."""
    import io

    from PIL import Image

    canvas = Image.new("RGB", (64, 64), "white")
    canvas.paste((128, 128, 128), (16, 16, 48, 48))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


WARM_UP_PRODUCTS = (ProductInput(designation="warm-up"), ProductInput(image=_blank_png()))
"""Run through a model loaded for a swap before it serves: a text and an image, so that what each path builds on
first use (the image trunks' inference graph, oneDNN's kernels) is paid before it takes a request. The model loaded
at start is not warmed: the first requests after a start pay that once (about a second for the image graph)."""


def load_model(bundle: str, config: ServerConfig) -> Embedder:
    """The model at `bundle` as this server runs it (device, input policy, whether it reads image words)."""
    return load_embedder(bundle, config.device, config.limits, read_image_words=config.read_image_words)


def load_and_warm_up(bundle: str, config: ServerConfig) -> Embedder:
    """The model at `bundle`, after one forward of each kind of input (WARM_UP_PRODUCTS)."""
    embedder = load_model(bundle, config)
    for product in WARM_UP_PRODUCTS:  # one at a time: each shape a real request has (batch of one) is built
        embedder.embed([product])
    return embedder


def _model_loader(config: ServerConfig) -> ModelLoader:
    """Loads a model a published index names while the current one keeps serving: on a thread of its own (the
    forward thread is the batcher's, busy serving), then the warm-up forwards there, so lazy initialisation is
    paid before the model takes its first batch rather than by it."""
    async def load(bundle: str) -> Embedder:
        log.info("loading model %s for a newly published index", bundle)
        return await asyncio.to_thread(load_and_warm_up, bundle, config)

    return load


def _grpc_server(config: ServerConfig, metrics: ServerMetrics) -> grpc.aio.Server:
    """The error table wraps everything (refused calls are measured too); auth sits inside it."""
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorTableInterceptor(metrics)]
    if config.token:
        interceptors.append(BearerTokenInterceptor(config.token, open_services={HEALTH_SERVICE}))
    return grpc.aio.server(interceptors=interceptors,
                           options=[("grpc.max_receive_message_length", config.max_message_bytes),
                                    ("grpc.so_reuseport", 0)])  # a second server on a taken port must fail


def _bind(grpc_server: grpc.aio.Server, config: ServerConfig) -> int:
    address = f"{config.host}:{config.port}"
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            return grpc_server.add_secure_port(address, server_credentials(config.tls_cert, config.tls_key))
        return grpc_server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's only signal that the address is taken or invalid
        raise InvalidInput("port", f"cannot listen on {address}: {exc}") from None


def _limits(config: ServerConfig) -> RequestLimits:
    return RequestLimits(
        product=config.limits,
        max_classify_top_k=config.max_classify_top_k, max_search_top_k=config.max_search_top_k,
        batch_limit=config.batch_limit)


async def _load_first_index(watcher: IndexWatcher) -> None:
    """Serve the published index from the first request on; without one yet, start NOT_SERVING and keep polling."""
    try:
        await watcher.load_if_newer()
    except Exception:  # noqa: BLE001 - a broken index must not keep the server down: the watcher retries
        log.exception("could not load the published index at start-up; health stays NOT_SERVING until one loads")


def _metrics_host(grpc_host: str) -> str:
    """prometheus_client binds IPv4/IPv6 literals without brackets."""
    return "::" if grpc_host == "[::]" else grpc_host.strip("[]")
