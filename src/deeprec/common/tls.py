"""TLS and mutual TLS between every pair of services, switched by one setting.

``DEEPREC_TLS_DIR`` names a directory laid out like a Kubernetes TLS secret (with its CA):
``tls.crt``, ``tls.key`` and ``ca.crt``. Set, every server requires a client certificate
signed by that CA and every client presents its own: mutual TLS everywhere. Unset, traffic
is plaintext (local development on loopback).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from .settings import value

FILES = ("tls.crt", "tls.key", "ca.crt")


class TLSError(RuntimeError):
    pass


@dataclass(frozen=True)
class TLSConfig:
    cert: bytes
    key: bytes
    ca: bytes
    # Certificates name services, not loopback addresses: clients may need to check the
    # server's certificate against a fixed name (e.g. when dialling 127.0.0.1 locally).
    server_name: str | None = None

    @classmethod
    def from_dir(cls, directory: str, server_name: str | None = None) -> TLSConfig:
        root = Path(directory)
        missing = [name for name in FILES if not (root / name).is_file()]
        if missing:
            raise TLSError(
                f"DEEPREC_TLS_DIR={directory}: missing {', '.join(missing)} "
                f"(expected {', '.join(FILES)})"
            )
        cert, key, ca = ((root / name).read_bytes() for name in FILES)
        return cls(cert, key, ca, server_name)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list:
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def from_env() -> TLSConfig | None:
    directory = value("DEEPREC_TLS_DIR")
    if not directory:
        return None
    return TLSConfig.from_dir(directory, value("DEEPREC_TLS_SERVER_NAME"))
