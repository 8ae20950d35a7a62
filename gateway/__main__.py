"""`python -m widefunnel.gateway`: the gateway process that `widefunnel serve` starts in front of tritonserver."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from widefunnel.gateway.checks import Limits
from widefunnel.gateway.proxy import serve


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m widefunnel.gateway", description=__doc__)
    parser.add_argument("--http", type=_address, default=None, help="listen HOST:PORT for HTTP")
    parser.add_argument("--grpc", type=_address, default=None, help="listen HOST:PORT for gRPC")
    parser.add_argument("--http-upstream", required=True, help="tritonserver's HTTP HOST:PORT (loopback)")
    parser.add_argument("--grpc-upstream", required=True, help="tritonserver's gRPC HOST:PORT (loopback)")
    parser.add_argument("--metrics", type=_address, default=None, help="listen HOST:PORT for /metrics")
    parser.add_argument("--metrics-upstream", default=None, help="tritonserver's metrics HOST:PORT (loopback)")
    parser.add_argument("--repository", type=Path, required=True,
                        help="the model repository tritonserver serves: only its models are let through")
    parser.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s widefunnel-gateway %(levelname)s %(message)s")
    limits = Limits(max_body_bytes=args.max_body_bytes)

    async def run() -> None:
        task = asyncio.create_task(serve(args.http, args.grpc, args.http_upstream, args.grpc_upstream, limits,
                                         args.repository, metrics_listen=args.metrics,
                                         metrics_upstream=args.metrics_upstream))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    except OSError as exc:
        logging.error("cannot listen: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
