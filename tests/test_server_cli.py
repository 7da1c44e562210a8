"""ServerConfig from flags and SHOPCLIP_* env, and `shopclip serve` as operators run it (SIGTERM drains)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shopclip.errors import InvalidInput
from shopclip.server import cli
from shopclip.server.config import ServerConfig
from support.catalogue import FAKE_BUNDLE


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_flags_win_over_env_which_wins_over_defaults() -> None:
    args = parse(["--bundle", "fake", "--max-batch", "7"])
    env = {"SHOPCLIP_MAX_BATCH": "99", "SHOPCLIP_PORT": "6000", "SHOPCLIP_MAX_WAIT_MS": "2.5",
           "SHOPCLIP_INDEX_ROOT": "/data/index"}
    config = ServerConfig.from_sources(vars(args), env)
    assert (config.bundle, config.max_batch, config.port, config.max_wait_ms) == ("fake", 7, 6000, 2.5)
    assert config.index_root == "/data/index"
    assert config.queue_size == ServerConfig.__dataclass_fields__["queue_size"].default
    assert args.handler is cli.run_serve


@pytest.mark.parametrize("argv, env, field", [
    ([], {}, "bundle"),
    (["--bundle", "fake"], {"SHOPCLIP_MAX_BATCH": "many"}, "max_batch"),
    (["--bundle", "fake", "--max-batch", "0"], {}, "max_batch"),
    (["--bundle", "fake", "--abstain-threshold", "1.5"], {}, "abstain_threshold"),
    (["--bundle", "fake", "--tls-cert", "c.pem"], {}, "tls_cert"),
    (["--bundle", "fake"], {"SHOPCLIP_PORT": "70000"}, "port"),
    (["--bundle", "fake", "--torch-threads", "0"], {}, "torch_threads"),
    (["--bundle", "fake"], {"SHOPCLIP_FORWARD_WORKERS": "0"}, "forward_workers"),
    (["--bundle", "fake", "--image-words-workers", "-1"], {}, "image_words_workers"),
])
def test_bad_settings_name_the_field(argv: list[str], env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as error:
        ServerConfig.from_sources(vars(parse(argv)), env)
    assert error.value.field == field


def test_forward_threads_default_to_the_cores_the_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 5}, raising=False)  # e.g. a container cpuset
    assert ServerConfig(bundle="fake").forward_threads == 3
    assert ServerConfig(bundle="fake", torch_threads=1).forward_threads == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # platforms without affinity: the core count
    assert ServerConfig(bundle="fake").forward_threads == 16
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert ServerConfig(bundle="fake").forward_threads == 1


def test_the_token_never_shows_in_the_config_repr() -> None:
    assert "hunter2" not in repr(ServerConfig(bundle="fake", token="hunter2"))


def test_every_config_field_is_a_flag() -> None:
    from shopclip.input_policy import ProductLimits

    args = vars(parse(["--bundle", "fake"]))
    nested = set(ProductLimits.__dataclass_fields__)  # `limits` is flattened into its own flags
    assert (set(ServerConfig.__dataclass_fields__) - {"limits"}) | nested <= set(args)
    config = ServerConfig.from_sources(vars(parse(["--bundle", "fake", "--max-image-bytes", "77"])),
                                       {"SHOPCLIP_MAX_DESIGNATION_CHARS": "9"})
    assert config.limits == ProductLimits(max_image_bytes=77, max_designation_chars=9)


def test_serve_reports_serving_then_drains_on_sigterm() -> None:
    env = {**os.environ, "SHOPCLIP_BUNDLE": FAKE_BUNDLE, "SHOPCLIP_PORT": "0",
           "SHOPCLIP_HOST": "127.0.0.1"}
    process = subprocess.Popen([sys.executable, "-m", "shopclip.cli", "serve"], env=env, stderr=subprocess.PIPE,
                               text=True)
    try:
        port = wait_for_port(process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "draining" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_port(process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 60
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}")
        if match := re.search(r"listening on port (\d+)", line):
            return int(match.group(1))
    raise AssertionError("serve did not start listening in time")


def test_serving_threads_keep_blas_on_the_calling_thread() -> None:
    """OpenBLAS's spinning pthreads beside torch's OpenMP threads made a batch-1 Classify 80 ms instead of 5:
    `serve` runs BLAS on the calling thread and gives torch and FAISS the forward threads (own process: the
    settings are process-wide)."""
    code = ("import numpy, torch, faiss\n"
            "from threadpoolctl import threadpool_info\n"
            "from shopclip.server.app import set_forward_threads\n"
            "set_forward_threads(3)\n"
            "numpy_blas = [i['num_threads'] for i in threadpool_info() if 'numpy' in i['filepath']]\n"
            "print(numpy_blas, torch.get_num_threads(), faiss.omp_get_max_threads())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[1]", "3", "3"]
