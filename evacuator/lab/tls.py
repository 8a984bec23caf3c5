"""A throwaway certificate authority (openssl) and a loopback server certificate, for TLS tests and labs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from evacuator.errors import LabError
from evacuator.lab.broker import BrokerTls

_DAYS = "2"


def make_test_ca(directory: Path, *, name: str = "evacuator-test") -> BrokerTls:
    """A new CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / f"{name}-ca.key", directory / f"{name}-ca.pem"
    key, request, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_cert),
             "-days", _DAYS, "-subj", f"/CN={name} CA")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request),
             "-subj", "/CN=localhost")  # fmt: skip
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", _DAYS, "-extfile", str(extensions))  # fmt: skip
    key.chmod(0o644)  # the broker may run as another user; this key protects nothing but a test
    return BrokerTls(ca_file=ca_cert, cert_file=cert, key_file=key)


def _openssl(*arguments: str) -> None:
    try:
        done = subprocess.run(
            ["openssl", *arguments], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"openssl {arguments[0]} could not run: {exc!r}") from exc
    if done.returncode != 0:
        raise LabError(f"openssl {arguments[0]} failed ({done.returncode}): {done.stderr.strip()}")
