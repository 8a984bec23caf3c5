"""The data channel's wire: the ticket asked for over the broker, the frames on the socket, and its TLS.

Why a channel of our own: a libvirt upload costs the destination's libvirtd about 3 s of CPU per GiB (its
stream thread copies every 256 KiB message into the page cache), so a copy ran at a third of what the disks
allow. The destination's own evacuator daemon writes the file itself instead (evacuator/transfer/receiver.py).

How a transfer is authorised: the mover asks the destination's daemon, over the hosts' broker exchange (the
same trust as digest requests), for a ticket to one freshly created volume of its pool. The ticket holds a
single-use random token, the port, and the SHA-256 fingerprint of the daemon's TLS certificate (made afresh
at each start): the mover pins that fingerprint, so no certificate authority is needed, and proves itself
with the token, sent only inside the checked TLS session. A daemon takes copies in clear text too only when
its admin wrote `encryption: none` (a trusted migration network); a mover sends clear text only to such a
daemon, and only when its own setting lets it (see `wants_tls`); the verification digest still checks every
byte end to end.

The hello: the mover sends MAGIC (inside TLS when encrypted); the daemon answers READY once it takes the
connection (a daemon that refuses closes it, or answers ERROR); only then does the mover send the 32 token
bytes, and the daemon answers GO or ERROR. So a mover whose connection is refused, or whose daemon does not
answer, has not shown its token and uploads through libvirt instead.

Frames, mover to daemon, after GO:
    DATA  b"D" u64 offset, u32 length, then length bytes (holes are simply skipped: the file starts empty)
    END   b"E" u64 total length (the file is cut or extended to it), u64 data bytes sent
The daemon answers END, once the file and its directory entry are on disk, with DONE u64 bytes written, or
at any point with ERROR u16 length and a UTF-8 message, and closes.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from evacuator.errors import EvacuatorError

MAGIC = b"EVACDATA2\n"  # 1: the token came with MAGIC, before the daemon said READY
TLS_HANDSHAKE = b"\x16"  # the first byte of any TLS connection; MAGIC starts otherwise
TOKEN_BYTES = 32
RECEIVE_TYPE = "receive"  # the message type of a ticket request on the peers exchange
DATA, END, READY, GO, DONE, ERROR = b"D", b"E", b"R", b"G", b"K", b"X"
DATA_HEADER = struct.Struct(">QI")
END_BODY = struct.Struct(">QQ")
DONE_BODY = struct.Struct(">Q")
ERROR_LENGTH = struct.Struct(">H")
MAX_FRAME_BYTES = 4 << 20
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$"

Encryption = Literal["auto", "tls", "none"]
"""Settings' `data_channel.encryption`. What this host's daemon takes: clear text as well as TLS with "none"
only (`takes_clear_text`). How its mover's copies go: see `wants_tls`."""

_ENCRYPTED_TRANSPORTS = frozenset({"tls", "ssh", "libssh", "libssh2"})


def libvirt_transport_encrypted(uri: str) -> bool:
    """Whether libvirt reaches the host at `uri` encrypted: `qemu+tls://`, `+ssh`, `+libssh(2)`, and a
    remote `qemu://host/` (libvirt's default transport is TLS). `qemu+tcp://` is clear text."""
    parts = urlsplit(uri)
    _driver, _, transport = parts.scheme.partition("+")
    if not transport:
        return bool(parts.hostname)
    return transport in _ENCRYPTED_TRANSPORTS


def takes_clear_text(encryption: Encryption) -> bool:
    """Whether a daemon whose setting is `encryption` takes copies in clear text: only when its admin wrote
    "none" for a trusted migration network."""
    return encryption == "none"


def wants_tls(encryption: Encryption, uri: str) -> bool:
    """Whether a copy to the host libvirt reaches at `uri` must go encrypted: always with "tls", not by this
    host's choice with "none", and with "auto" when libvirt's URI for that host names an encrypted transport
    (libvirt_transport_encrypted). Clear text needs the receiving daemon's leave too (its ticket's
    `clear_allowed`, which only "none" there gives)."""
    return encryption == "tls" or (encryption == "auto" and libvirt_transport_encrypted(uri))


class ChannelError(EvacuatorError):
    """The data channel failed or refused a transfer; the message says which side and why."""


class ChannelRefused(ChannelError):
    """The receiver said no (an ERROR frame), with its reason: before GO, nothing of the file was touched."""


class ReceiveRequest(BaseModel):
    """Asks a host's daemon for a ticket to write one of its pool's volumes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    pool: str = Field(pattern=_NAME)
    volume: str = Field(pattern=_NAME)


class ReceiveTicket(BaseModel):
    """A daemon's leave to write one volume once; `token` is None with a reason in `error` when refused.
    `address` is None when the mover should use the address it reaches the host's libvirt at. The daemon
    always serves TLS (its certificate's fingerprint in `tls_sha256`), and clear text too when
    `clear_allowed`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    pool: str
    volume: str
    token: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    port: int | None = Field(default=None, ge=1, le=65535)
    address: str | None = Field(default=None, max_length=255)
    tls_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    clear_allowed: bool = False
    error: str | None = Field(default=None, max_length=1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTls:
    """The daemon's TLS side: a context serving a certificate made at start, and that certificate's
    fingerprint, which tickets carry."""

    context: ssl.SSLContext
    sha256: str


# Makes a fresh P-256 key and a self-signed certificate for the common name in argv[1], and writes both as PEM
# to stdout, certificate first. In a child process, so the daemon never imports `cryptography` (13 MiB of its
# RSS, for one certificate at start); the key goes through the pipe between the two, nowhere else.
_MAKE_CERTIFICATE = """
import datetime as dt, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sys.argv[1][:64])])
now = dt.datetime.now(dt.UTC)
certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=3650))
               .sign(key, hashes.SHA256()))
sys.stdout.buffer.write(certificate.public_bytes(serialization.Encoding.PEM))
sys.stdout.buffer.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
"""
_PEM_END_CERTIFICATE = b"-----END CERTIFICATE-----\n"


def server_tls(common_name: str) -> ServerTls:
    """A fresh P-256 key and self-signed certificate (never written anywhere lasting: the key lives in this
    process only), served with TLS 1.3 alone."""
    try:
        made = subprocess.run([sys.executable, "-c", _MAKE_CERTIFICATE, common_name], capture_output=True,
                              timeout=60, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise ChannelError(f"cannot make the data channel's TLS certificate: {exc}") from exc
    cert_pem, found, key_pem = made.stdout.partition(_PEM_END_CERTIFICATE)
    if not found or not key_pem:
        raise ChannelError("cannot make the data channel's TLS certificate: no certificate and key came back")
    cert_pem += _PEM_END_CERTIFICATE
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # ssl loads a chain only from files: a private directory that is gone once they are read.
    with tempfile.TemporaryDirectory(prefix="evacuator-tls-") as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))
    return ServerTls(context=context, sha256=hashlib.sha256(der).hexdigest())


def client_tls(sock: socket.socket, *, expected_sha256: str, timeout_seconds: float) -> ssl.SSLSocket:
    """TLS over `sock`, trusting exactly the certificate whose fingerprint the ticket named."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # checked below against the pinned fingerprint instead
    sock.settimeout(timeout_seconds)
    wrapped = context.wrap_socket(sock)
    der = wrapped.getpeercert(binary_form=True)
    if der is None or not hmac.compare_digest(hashlib.sha256(der).hexdigest(), expected_sha256):
        wrapped.close()
        raise ChannelError("the receiver's TLS certificate is not the one its ticket names")
    return wrapped


def receive_into(sock: socket.socket, view: memoryview, *, deadline: float | None = None) -> None:
    """Fills `view` from the socket, or ChannelError when the peer closes first. With a `deadline`
    (time.monotonic), all of it by then, however the bytes trickle in: each read waits only for what is
    left (TimeoutError past it)."""
    got = 0
    while got < len(view):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{got} of {len(view)} bytes came before the deadline")
            sock.settimeout(left)
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ChannelError(f"the peer closed the channel ({got} of {len(view)} bytes of a frame came)")
        got += n


def receive_exactly(sock: socket.socket, length: int, *, deadline: float | None = None) -> bytes:
    """`length` bytes, or ChannelError when the peer closes first (TimeoutError past a `deadline`)."""
    buffer = bytearray(length)
    receive_into(sock, memoryview(buffer), deadline=deadline)
    return bytes(buffer)


def error_frame(message: str) -> bytes:
    encoded = message.encode()[:1000]
    return ERROR + ERROR_LENGTH.pack(len(encoded)) + encoded


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The daemon's answer: (READY, b""), (GO, b""), (DONE, body), or ChannelRefused carrying its ERROR's
    message."""
    kind = receive_exactly(sock, 1)
    if kind in (READY, GO):
        return kind, b""
    if kind == DONE:
        return kind, receive_exactly(sock, DONE_BODY.size)
    if kind == ERROR:
        (length,) = ERROR_LENGTH.unpack(receive_exactly(sock, ERROR_LENGTH.size))
        reason = receive_exactly(sock, length).decode(errors="replace")
        raise ChannelRefused(f"the receiver refused: {reason}")
    raise ChannelError(f"the receiver answered an unknown frame {kind!r}")
