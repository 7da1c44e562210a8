"""The declared runtime minimums match what the generated stubs demand at import."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import shopclip.v1

ROOT = Path(__file__).resolve().parents[1]


def _dependencies() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~ ]", spec, 1)[0]: spec for spec in project["dependencies"]}


def _minimum(spec: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.search(r">=([\d.]+)", spec).group(1).split("."))


def test_grpcio_minimum_is_the_stub_generators_version() -> None:
    stubs = Path(shopclip.v1.__file__).parent
    generated = {re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text()).group(1)
                 for path in stubs.glob("*_pb2_grpc.py")}
    assert len(generated) == 1
    assert _minimum(_dependencies()["grpcio"]) == tuple(int(p) for p in generated.pop().split("."))


def test_protobuf_range_holds_the_gencode_version() -> None:
    stubs = Path(shopclip.v1.__file__).parent
    versions = {tuple(int(v) for v in re.search(r"PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", path.read_text()).groups())
                for path in stubs.glob("*_pb2.py")}
    assert len(versions) == 1
    gencode = versions.pop()
    spec = _dependencies()["protobuf"]
    assert _minimum(spec) == gencode
    assert f"<{gencode[0] + 1}" in spec  # protobuf refuses stubs from another major version
