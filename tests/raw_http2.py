"""One gRPC call written frame by frame over HTTP/2 (the h2 library): the wire that no gRPC
client library sends, such as a message cut short or a length prefix past the data."""

from __future__ import annotations

import socket
import struct

import h2.config
import h2.connection
import h2.events

CHUNK = 16_000  # under HTTP/2's default 16 KiB frame limit


def grpc_message(payload: bytes, length: int | None = None, compressed: int = 0) -> bytes:
    """gRPC's length-prefixed message; ``length`` overrides the true one."""
    return struct.pack(">BI", compressed, len(payload) if length is None else length) + payload


def call(address: str, method: str, body: bytes, timeout: float = 30.0) -> dict[str, str]:
    """Send one request stream (HEADERS, then ``body`` as DATA ending the stream) and read
    the answer: ``:status``, ``grpc-status`` and ``grpc-message`` from its headers and
    trailers, ``reset`` (the stream's error code) or ``closed``. A server that never
    answers raises TimeoutError after ``timeout`` seconds."""
    host, port = address.rsplit(":", 1)
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    answer: dict[str, str] = {}
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        for start in range(0, len(body), CHUNK):
            connection.send_data(stream, body[start : start + CHUNK])
        connection.end_stream(stream)
        sock.sendall(connection.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                answer["closed"] = "1"
                return answer
            for event in connection.receive_data(data):
                for name, value in getattr(event, "headers", None) or ():
                    if name in (":status", "grpc-status", "grpc-message"):
                        answer[name] = value
                if isinstance(event, h2.events.StreamReset):
                    answer["reset"] = str(event.error_code)
                if isinstance(
                    event,
                    (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated),
                ):
                    return answer
            sock.sendall(connection.data_to_send())
