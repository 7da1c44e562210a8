"""The one TLS certificate helper: a self-signed certificate for localhost and 127.0.0.1, made by the openssl
binary (no Python crypto dependency). `tests/conftest.py` offers it as the `tls_certificate` fixture."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def openssl_binary() -> str | None:
    return shutil.which("openssl")


def make_certificate(folder: Path, common_name: str = "localhost") -> Certificate:
    """Writes cert.pem and key.pem (EC P-256, one day) into `folder`. Raises FileNotFoundError without openssl."""
    openssl = openssl_binary()
    if openssl is None:
        raise FileNotFoundError("openssl binary not found")
    folder.mkdir(parents=True, exist_ok=True)
    certificate = Certificate(cert=folder / "cert.pem", key=folder / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(certificate.key), "-out", str(certificate.cert), "-days", "1",
                    "-subj", f"/CN={common_name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return certificate
