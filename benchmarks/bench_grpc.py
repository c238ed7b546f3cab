"""A DenseNet-121-sized swap over loopback gRPC + mutual TLS vs a raw loopback socket copy."""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from consensus.transport.grpc_transport import (
    ExchangeServer,
    PeerClient,
    RetryPolicy,
    TransportConfig,
    load_tls,
)
from hospital_node.provisioning.network import parse_network
from hospital_node.provisioning.provision import provision

DEFAULT_OUT = Path("build/bench/grpc.json")
# Parameters of DenseNet-121 with a 14-finding head: 6,953,856 features + 1024 * 14 + 14.
DENSENET121_PARAMS = 6_968_206


class _EchoHandler:
    """Stands in for a node: answers every swap with a fixed message of the same size."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def outgoing_for(self, peer: str) -> bytes:
        return self.reply

    def validate(self, peer: str, payload: bytes) -> bytes:
        return payload

    def deliver(self, peer: str, validated: bytes, num_bytes: int) -> None:
        pass

    def on_sent(self, peer: str, num_bytes: int) -> None:
        pass

    def on_withheld(self, peer: str) -> None:
        pass

    def model_for(self, peer: str) -> bytes:
        return self.reply


def timed(run: Callable[[], object], repeats: int) -> list[float]:
    run()  # warm-up: connection, TLS handshake, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def grpc_swap_times(payload: bytes, reply: bytes, repeats: int, workdir: Path) -> list[float]:
    """Seconds per swap (payload out, reply back) between two provisioned nodes on 127.0.0.1."""
    hospitals = [  # ports are only written into node.toml; the server below binds port 0
        {"name": n, "host": "127.0.0.1", "port": 50001 + i, "site_dir": "/d"}
        for i, n in enumerate(("alpha", "beta"))
    ]
    provision(parse_network({"hospitals": hospitals, "edges": [["alpha", "beta"]]}), workdir)
    tls = {
        n: load_tls(
            ca_cert=workdir / n / "ca.crt",
            cert=workdir / n / f"{n}.crt",
            key=workdir / n / f"{n}.key",
        )
        for n in ("alpha", "beta")
    }
    config = TransportConfig()
    server = ExchangeServer(
        name="alpha",
        neighbours=["beta"],
        handler=_EchoHandler(reply),
        tls=tls["alpha"],
        config=config,
    )
    port = server.start()
    client = PeerClient(
        name="beta", peer="alpha", address=f"127.0.0.1:{port}", tls=tls["beta"],
        rng=random.Random(0), config=config, retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip
    try:
        return timed(lambda: client.swap(payload), repeats)
    finally:
        client.close()
        server.stop(grace=1)


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed early")
        got += n
    return buffer


def raw_swap_times(payload: bytes, reply: bytes, repeats: int) -> list[float]:
    """Same bytes over a plain TCP socket on 127.0.0.1 (no TLS, no framing, no hashing)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for _ in range(repeats + 1):
                _recv_exactly(conn, len(payload))
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as sock:

        def swap() -> None:
            sock.sendall(payload)
            _recv_exactly(sock, len(reply))

        times = timed(swap, repeats)
    thread.join(10)
    listener.close()
    return times


def run(*, params: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    payload = rng.standard_normal(params, dtype=np.float32).tobytes()
    reply = rng.standard_normal(params, dtype=np.float32).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        grpc_times = grpc_swap_times(payload, reply, repeats, Path(tmp))
    raw_times = raw_swap_times(payload, reply, repeats)
    moved_mb = (len(payload) + len(reply)) / 1e6
    grpc_s, raw_s = statistics.median(grpc_times), statistics.median(raw_times)
    return {
        "benchmark": "grpc_swap_vs_raw_loopback",
        "message_bytes": len(payload),
        "moved_per_swap_mb": moved_mb,
        "repeats": repeats,
        "chunk_size": TransportConfig().chunk_size,
        "grpc_mtls_swap_s": {"median": grpc_s, "all": grpc_times},
        "raw_socket_swap_s": {"median": raw_s, "all": raw_times},
        "grpc_mtls_mb_per_s": moved_mb / grpc_s,
        "raw_socket_mb_per_s": moved_mb / raw_s,
        "grpc_over_raw_time_ratio": grpc_s / raw_s,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--params", type=int, default=DENSENET121_PARAMS, help="float32 values per message"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result = run(params=args.params, repeats=args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    mb = result["message_bytes"] / 1e6
    print(
        f"message: {mb:.1f} MB each way ({result['moved_per_swap_mb']:.1f} MB per swap), "
        f"{args.repeats} swaps"
    )
    print(
        f"gRPC + mutual TLS : {result['grpc_mtls_swap_s']['median'] * 1e3:8.1f} ms/swap"
        f"  {result['grpc_mtls_mb_per_s']:8.1f} MB/s"
    )
    print(
        f"raw loopback TCP  : {result['raw_socket_swap_s']['median'] * 1e3:8.1f} ms/swap"
        f"  {result['raw_socket_mb_per_s']:8.1f} MB/s"
    )
    print(f"ratio (gRPC/raw time): {result['grpc_over_raw_time_ratio']:.1f}x  -> {args.out}")
    return result


if __name__ == "__main__":
    main()
