"""Fixtures shared across test modules."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certificate:
    """A self-signed TLS certificate for localhost / 127.0.0.1 and its private key, as PEM files."""

    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@pytest.fixture
def tls_certificate(tmp_path: Path) -> Certificate:
    """Made by the openssl binary (no Python crypto dependency); skips where there is none."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl binary not found")
    certificate = Certificate(cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(certificate.key), "-out", str(certificate.cert), "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return certificate
