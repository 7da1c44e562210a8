"""Faults against the real processes: a `shopclip serve` child process, the real indexer publishing into a real
index root, a real LanceDB catalogue; the model is the fake embedder (no weights).

- the served version's files damaged, or the whole index root removed, while serving: the server answers from
  its copy in memory, and health (`shopclip.index`, reason in trailing metadata) and the log say why;
- disk full while publishing (RLIMIT_FSIZE on the builder process, or the CURRENT flip failing): a clear
  one-line error, the previous version stays current and loadable, nothing half-written is left or picked up;
- a LanceDB table damaged: an error naming the table and where it lives, and nothing published from a partial
  read (a table that lost its newest commits reads as an older version: the build notices and refuses);
- the server SIGKILLed under load, then restarted: it serves the last published version;
- client deadlines shorter than the server's batch wait: DEADLINE_EXCEEDED, and the expired work is dropped,
  not computed later or left queued.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import index as support_index
from support.catalogue import CatalogueRow, catalogue_title

from shopclip.cli import main
from shopclip.errors import InvalidInput, ShopclipError
from shopclip.indexer import publish
from shopclip.indexer.build import BuildOptions, build_and_publish
from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.ingest import ingest_folder
from shopclip.indexer.published import open_current
from shopclip.model import load_embedder
from shopclip.server.app import HEALTH_REASON_KEY, INDEX_HEALTH_SERVICE, create_server
from shopclip.server.config import ServerConfig
from shopclip.v1 import (classification_pb2, classification_pb2_grpc, info_pb2, info_pb2_grpc, product_pb2,
                         search_pb2, search_pb2_grpc)

BUNDLE = "fake:dim=32,classes=27"
CODES = (3, 7, 11, 19)
PRODUCTS = 60
SMALL = BuildOptions(embed_batch=16, commit_every=64)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# ------------------------------------------------------------------ a real catalogue and published index


def write_drop(root: Path, productids: range) -> Path:
    """A text-only drop in the challenge layout; titles of one code share two words (the fake embedder then
    puts them close together, so neighbours and votes are meaningful)."""
    codes = [CODES[productid % len(CODES)] for productid in productids]
    return support_index.write_drop(root, [CatalogueRow(productid, code, catalogue_title(code, productid))
                                           for productid, code in zip(productids, codes)])


@pytest.fixture(scope="module")
def embedded_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalogue whose products all have vectors (built once; tests copy it)."""
    work = tmp_path_factory.mktemp("template")
    catalogue = Catalogue(str(work / "db"))
    ingest_folder(write_drop(work / "drop", range(1, PRODUCTS + 1)), catalogue)
    build_and_publish(catalogue, work / "index", load_embedder(BUNDLE), SMALL)
    return work / "db"


def published(tmp_path: Path, template: Path) -> tuple[Catalogue, Path, str]:
    """A copy of the catalogue and its first published version under `tmp_path / "index"`."""
    shutil.copytree(template, tmp_path / "db")
    catalogue = Catalogue(str(tmp_path / "db"))
    version = build_and_publish(catalogue, tmp_path / "index", load_embedder(BUNDLE), SMALL).version
    return catalogue, tmp_path / "index", version


def version_dir(root: Path, version: str) -> Path:
    return publish.versions_dir(root) / version


def leftovers(root: Path) -> list[str]:
    """Everything under versions/ that is not a complete version (a dead or failed build's staging)."""
    return sorted(p.name for p in publish.versions_dir(root).iterdir() if p.name not in publish.list_versions(root))


# ------------------------------------------------------------------ a `shopclip serve` child process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`python -m shopclip.cli serve` on a loopback port, its log in a file; health-checked like a load balancer."""

    def __init__(self, index_root: Path, log: Path, *flags: str, port: int | None = None) -> None:
        self.index_root, self.log_path, self.flags = index_root, log, flags
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        command = [sys.executable, "-m", "shopclip.cli", "serve", "--bundle", BUNDLE, "--index-root",
                   str(self.index_root), "--host", "127.0.0.1", "--port", str(self.port), "--poll-interval-s",
                   "0.1", "--torch-threads", "1", *self.flags]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for(lambda: self.health()[0] == SERVING, 60, f"server SERVING:\n{self.log()}")
        return self

    def health(self, service: str = "") -> tuple[int | None, str]:
        """(status, reason from trailing metadata); status None while nothing answers."""
        try:
            with grpc.insecure_channel(self.target) as channel:
                response, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
                    health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError:
            return None, ""
        return response.status, dict(call.trailing_metadata() or ()).get(HEALTH_REASON_KEY, "")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start servers with `serve(index_root, *flags, port=None)`; every one is killed at the end."""
    started: list[ServeProcess] = []

    def start(index_root: Path, *flags: str, port: int | None = None) -> ServeProcess:
        server = ServeProcess(index_root, tmp_path / f"server-{len(started)}.log", *flags, port=port)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def classify_request(text: str) -> classification_pb2.ClassifyRequest:
    return classification_pb2.ClassifyRequest(product=product_pb2.Product(designation=text))


def answers_from(target: str, version: str) -> None:
    """Classify, SearchSimilar by product and by productid all succeed, from `version`."""
    with grpc.insecure_channel(target) as channel:
        answer = classification_pb2_grpc.ClassificationServiceStub(channel).Classify(
            classify_request("famille7 sorte7 nouveau"), timeout=10)
        assert answer.versions.index_version == version and answer.predictions
        assert {n.prdtypecode for n in answer.neighbors} == {7}  # the loaded vectors still vote
        search = search_pb2_grpc.SearchServiceStub(channel)
        by_product = search.SearchSimilar(search_pb2.SearchSimilarRequest(
            product=product_pb2.Product(designation="famille3 sorte3"), top_k=5), timeout=10)
        assert len(by_product.results) == 5 and by_product.versions.index_version == version
        by_id = search.SearchSimilar(search_pb2.SearchSimilarRequest(productid=4, top_k=3), timeout=10)
        assert [r.prdtypecode for r in by_id.results] == [3, 3, 3] and "modele" in by_id.results[0].designation


def served_version(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        info = info_pb2_grpc.InfoServiceStub(channel).GetInfo(info_pb2.GetInfoRequest(), timeout=10)
    return info.versions.index_version


# ------------------------------------------------------------------ index removed or damaged while serving


def truncate_data_files(directory: Path) -> list[str]:
    """In place, as `> file` does (same inode): what used to kill a server that memory-mapped them."""
    names = [publish.VECTORS_FILE, publish.PRODUCTS_FILE, publish.INDEX_FILE]
    for name in names:
        os.truncate(directory / name, 0)
    return names


def garble_manifest(directory: Path) -> list[str]:
    """Replaced whole (write then rename): an in-place write shows a poll the empty file first, a second damage
    the server rightly logs too, and the test then counted two problems where it means one."""
    path = directory / publish.MANIFEST_FILE
    path.with_suffix(".garbage").write_bytes(b"{\x00 not json")
    os.replace(path.with_suffix(".garbage"), path)
    return [publish.MANIFEST_FILE]


@pytest.mark.parametrize("damage", [truncate_data_files, garble_manifest], ids=["files-truncated", "manifest-garbage"])
def test_served_version_damaged_on_disk_keeps_serving_from_memory(
        tmp_path: Path, embedded_catalogue: Path, serve: Callable[..., ServeProcess],
        damage: Callable[[Path], list[str]]) -> None:
    _, root, version = published(tmp_path, embedded_catalogue)
    server = serve(root)
    assert server.health(INDEX_HEALTH_SERVICE) == (SERVING, "")
    answers_from(server.target, version)

    damaged = damage(version_dir(root, version))
    # Files are damaged one after another, so a poll may first see only some of them (a problem of its own).
    wait_for(lambda: all(f"{name} changed" in server.health(INDEX_HEALTH_SERVICE)[1] for name in damaged), 10,
             "shopclip.index NOT_SERVING, naming every damaged file")
    status, reason = server.health(INDEX_HEALTH_SERVICE)
    assert status == NOT_SERVING and f"still serving version {version} from memory" in reason
    assert server.health() == (SERVING, "")  # it does serve: a load balancer must keep it
    answers_from(server.target, version)
    problem_lines = f"published index: files of version {version}"
    logged = server.log().count(problem_lines)
    time.sleep(0.5)  # five more polls: the problem is logged once, not at every poll
    assert server.alive() and server.log().count(problem_lines) == logged
    assert 1 <= logged <= len(damaged)  # once per distinct problem seen on the way


def test_index_root_removed_while_serving_keeps_serving_and_recovers_on_republish(
        tmp_path: Path, embedded_catalogue: Path, serve: Callable[..., ServeProcess]) -> None:
    catalogue, root, version = published(tmp_path, embedded_catalogue)
    server = serve(root)
    shutil.rmtree(root)
    wait_for(lambda: server.health(INDEX_HEALTH_SERVICE)[0] == NOT_SERVING, 10, "shopclip.index NOT_SERVING")
    assert f"index root {root} no longer exists" in server.health(INDEX_HEALTH_SERVICE)[1]
    assert server.health()[0] == SERVING
    answers_from(server.target, version)
    assert f"index root {root} no longer exists" in server.log()

    republished = build_and_publish(catalogue, root, load_embedder(BUNDLE), SMALL).version
    wait_for(lambda: served_version(server.target) == republished, 10, "the republished version")
    assert server.health(INDEX_HEALTH_SERVICE) == (SERVING, "")
    answers_from(server.target, republished)
    assert "published index problem resolved" in server.log()


def test_a_damaged_version_is_refused_naming_the_file(tmp_path: Path, embedded_catalogue: Path) -> None:
    """What a restart meets after the damage above: no server comes up on a version it cannot read whole."""
    from shopclip.errors import NotReady

    _, root, version = published(tmp_path, embedded_catalogue)
    vectors = version_dir(root, version) / publish.VECTORS_FILE
    vectors.write_bytes(vectors.read_bytes()[:-32 * 4 * 5])  # five rows short, and no longer a valid .npy
    with pytest.raises(NotReady, match=f"{publish.VECTORS_FILE}.* unreadable"):
        open_current(root)
    vectors.unlink()
    with pytest.raises(NotReady, match=f"version {version} .* incomplete"):
        open_current(root)


# ------------------------------------------------------------------ disk full during publish


def with_file_size_limit(max_bytes: int, command: list[str]) -> list[str]:
    """`command` run with no file allowed to grow past `max_bytes` (Python ignores SIGXFSZ, so a write past it
    fails with EFBIG the way it fails with ENOSPC on a full disk). A small Python sets the limit and execs the
    command: a preexec_fn would fork this process, which has lancedb's runtime loaded."""
    limit = ("import os, resource, sys; "
             f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_bytes}, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
             "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", limit, *command]


def build_command(catalogue: Catalogue, root: Path) -> list[str]:
    return [sys.executable, "-m", "shopclip.cli", "index", "build", "--catalogue", catalogue.uri, "--index-root",
            str(root), "--bundle", BUNDLE]


def test_disk_full_while_writing_a_version_keeps_the_previous_one(tmp_path: Path, embedded_catalogue: Path) -> None:
    catalogue, root, first = published(tmp_path, embedded_catalogue)
    # Every vector file of 60 products is larger than 4 KiB.
    full = subprocess.run(with_file_size_limit(4096, build_command(catalogue, root)), capture_output=True, text=True)
    assert full.returncode == 1, full.stderr
    error = full.stderr.strip().splitlines()[-1]
    assert "Traceback" not in full.stderr and error.startswith("shopclip index: error: index root")
    assert f"File too large: {publish.versions_dir(root)}" in error, error  # the errno and the file
    assert f"nothing was published, {first} stays current" in error
    assert publish.read_current(root) == first and publish.list_versions(root) == [first]
    assert leftovers(root) == []  # the failed build's files are gone: they would keep a full disk full
    assert len(open_current(root)) == PRODUCTS

    after = subprocess.run(build_command(catalogue, root), capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    assert publish.read_current(root) != first and len(open_current(root)) == PRODUCTS


def test_disk_full_at_the_flip_removes_the_unpublished_version(
        tmp_path: Path, embedded_catalogue: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version is complete and renamed into versions/, then CURRENT cannot be written."""
    catalogue, root, first = published(tmp_path, embedded_catalogue)
    write_text = publish.write_text_atomically

    def no_space_for_current(path: Path, text: str) -> None:
        if Path(path).name == publish.CURRENT_FILE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_text(path, text)

    monkeypatch.setattr(publish, "write_text_atomically", no_space_for_current)
    with pytest.raises(ShopclipError, match=f"No space left on device.*nothing was published, {first} stays"):
        build_and_publish(catalogue, root, load_embedder(BUNDLE), SMALL)
    assert publish.read_current(root) == first and publish.list_versions(root) == [first] and leftovers(root) == []
    assert open_current(root).version == first


# ------------------------------------------------------------------ a damaged LanceDB table


def table_dir(catalogue: Catalogue) -> Path:
    return Path(catalogue.uri) / f"{catalogue.table_name}.lance"


def truncate_data(table: Path) -> str:
    for data in (table / "data").glob("*.lance"):
        os.truncate(data, data.stat().st_size // 2)
    return "cannot read it"


def remove_data(table: Path) -> str:
    for data in (table / "data").glob("*.lance"):
        data.unlink()
    return "Not found"


def cut_version_manifest(table: Path) -> str:
    newest = max((table / "_versions").glob("*.manifest"), key=lambda p: p.stat().st_mtime_ns)
    os.truncate(newest, 10)
    return "cannot open"


def remove_newest_commit(table: Path) -> str:
    """Lance then opens the previous version without a word: the embeddings' commit is lost."""
    max((table / "_versions").glob("*.manifest"), key=lambda p: p.stat().st_mtime_ns).unlink()
    return "lost commits"


def remove_table(table: Path) -> str:
    """The next open creates an empty table in its place."""
    shutil.rmtree(table)
    return "lost commits"


@pytest.mark.parametrize("damage", [truncate_data, remove_data, cut_version_manifest, remove_newest_commit,
                                    remove_table])
def test_damaged_catalogue_table_is_named_and_nothing_is_published(
        tmp_path: Path, embedded_catalogue: Path, capsys: pytest.CaptureFixture[str],
        damage: Callable[[Path], str]) -> None:
    catalogue, root, first = published(tmp_path, embedded_catalogue)
    expected = damage(table_dir(catalogue))
    index = ["--catalogue", catalogue.uri, "--index-root", str(root), "--bundle", BUNDLE]
    assert main(["index", "build", *index]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"table 'products' at {catalogue.uri}" in error and expected in error, error
    assert publish.read_current(root) == first and publish.list_versions(root) == [first] and leftovers(root) == []
    if damage is remove_data:  # Lance names a missing file (not a short one)
        assert f"{table_dir(catalogue).name}/data/" in error
    with pytest.raises(InvalidInput, match="table 'products'"):
        build_and_publish(Catalogue(catalogue.uri), root, load_embedder(BUNDLE), SMALL)
    assert len(open_current(root)) == PRODUCTS


# ------------------------------------------------------------------ server SIGKILLed under load, restarted


class Load:
    """Threads calling ClassifyBatch in a loop; counts answers by index version and failures by code."""

    def __init__(self, target: str, threads: int = 6) -> None:
        self.target, self.stop = target, threading.Event()
        self.versions: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._threads), "a client hung"

    def _run(self, worker: int) -> None:
        request = classification_pb2.ClassifyBatchRequest(products=[
            product_pb2.Product(designation=f"famille{CODES[i % 4]} sorte{CODES[i % 4]} essai{worker}-{i}")
            for i in range(16)])
        with grpc.insecure_channel(self.target) as channel:
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            while not self.stop.is_set():
                try:
                    answer = stub.ClassifyBatch(request, timeout=5)
                    outcome, counter = answer.results[0].versions.index_version, self.versions
                except grpc.RpcError as exc:
                    outcome, counter = exc.code().name, self.failures
                    time.sleep(0.02)
                with self._lock:
                    counter[outcome] += 1

    def wait_for_answers(self, count: int) -> None:
        start = sum(self.versions.values())
        wait_for(lambda: sum(self.versions.values()) >= start + count, 30, f"{count} answers under load")


def test_server_killed_under_load_restarts_on_the_last_published_version(
        tmp_path: Path, embedded_catalogue: Path, serve: Callable[..., ServeProcess]) -> None:
    catalogue, root, first = published(tmp_path, embedded_catalogue)
    server = serve(root, "--max-wait-ms", "20")
    ingest_folder(write_drop(tmp_path / "drop2", range(PRODUCTS + 1, PRODUCTS + 21)), catalogue)
    with Load(server.target) as load:
        load.wait_for_answers(10)
        second = build_and_publish(catalogue, root, load_embedder(BUNDLE), SMALL).version
        wait_for(lambda: load.versions[second] > 5, 30, "answers from the hot-swapped version")
        os.kill(server.process.pid, signal.SIGKILL)  # with batches in flight
        server.process.wait(timeout=30)
        wait_for(lambda: sum(load.failures.values()) > 5, 30, "clients to notice")
    assert set(load.failures) == {"UNAVAILABLE"}, load.failures  # in-flight and later calls: retryable, none hung
    assert load.versions[first] > 0 and load.versions[second] > 5

    killed_builder = subprocess.run(build_command(catalogue, root), capture_output=True,
                                    env={**os.environ, "SHOPCLIP_KILL_AT": "publish-before-flip"})
    assert killed_builder.returncode == -signal.SIGKILL and len(publish.list_versions(root)) == 3  # one unpublished

    restarted = serve(root, "--max-wait-ms", "20", port=server.port)
    assert served_version(restarted.target) == second
    assert restarted.health(INDEX_HEALTH_SERVICE) == (SERVING, "")
    with Load(restarted.target) as load:
        load.wait_for_answers(20)
    assert load.failures == Counter() and set(load.versions) == {second}


# ------------------------------------------------------------------ deadlines shorter than the batch wait


def test_deadlines_shorter_than_the_batch_wait_expire_and_leave_no_work_behind(
        tmp_path: Path, embedded_catalogue: Path) -> None:
    """In-process (a real server on a free port), so the batcher's queue and forwarded products can be read."""
    _, root, version = published(tmp_path, embedded_catalogue)
    config = ServerConfig(bundle=BUNDLE, index_root=str(root), host="127.0.0.1", port=0, max_wait_ms=1500,
                          max_batch=64, poll_interval_s=0.2)

    async def scenario() -> None:
        server, port = await create_server(config)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = classification_pb2_grpc.ClassificationServiceStub(channel)
                # Eight products at once: the batcher waits its 1.5 s for more, and stays in that mode.
                warm = await stub.ClassifyBatch(classification_pb2.ClassifyBatchRequest(
                    products=[product_pb2.Product(designation=f"famille3 chaud{i}") for i in range(8)]), timeout=10)
                assert {r.versions.index_version for r in warm.results} == {version}
                for round_ in range(3):
                    await calls_that_expire(stub, server, f"essai{round_}")
                answers = await asyncio.gather(*(stub.Classify(classify_request(f"famille11 sorte11 apres{i}"),
                                                               timeout=10) for i in range(4)))
                assert all(a.versions.index_version == version and {n.prdtypecode for n in a.neighbors} == {11}
                           for a in answers)
                assert server.batcher.depth == 0
        finally:
            await server.stop(0)

    asyncio.run(scenario())


async def calls_that_expire(stub: classification_pb2_grpc.ClassificationServiceStub, server: object,
                            tag: str) -> None:
    """16 calls with a 0.2 s deadline while the batcher waits 1.5 s to fill: every one expires, and once the
    wait ends they are dropped from the queue without a forward (no product computed for a caller who left)."""
    forwarded = lambda: server.metrics.registry.get_sample_value("shopclip_batch_size_sum") or 0.0  # noqa: E731
    before = forwarded()
    codes = await asyncio.gather(*(status_of(stub.Classify(classify_request(f"famille7 {tag}-{i}"), timeout=0.2))
                                   for i in range(16)))
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 16
    await wait_async(lambda: server.batcher.depth == 0, 5)
    assert forwarded() == before


async def status_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def wait_async(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
