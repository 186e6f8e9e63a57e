"""Run the API server with uvicorn: load the model, warn about open binds, shut down cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import signal
import sys
from pathlib import Path

import uvicorn

from .app import create_app
from .service import EngineOptions, ServedModel


@dataclasses.dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float = 30.0  # for in-flight requests to finish
    log_level: str = "info"
    lenient: bool = False  # ignore unknown request fields instead of refusing them


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model_dir: Path, server: ServerOptions, engine: EngineOptions) -> None:
    if not is_loopback(server.host) and not server.api_key:
        print(
            f"warning: serving on {server.host} without --api-key: anyone who can reach this "
            "port can use the model",
            file=sys.stderr,
            flush=True,
        )
    served = ServedModel(model_dir, engine)
    if served.model.max_batch_size == 1:
        print(
            "warning: this model was built for a batch of 1, so requests are decoded one at a "
            "time; rebuild it with `mlc build --max-batch-size 16` to batch them",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(
        served, server.api_key, server.max_body_bytes, server.shutdown_timeout, server.lenient
    )
    print(
        f"Serving {served.name} on http://{server.host}:{server.port}/v1 (batch "
        f"{served.model.max_batch_size}, KV cache {served.engine.kv_pages_total} pages)",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        # A backstop: the engine ends every request with an error event before this.
        timeout_graceful_shutdown=int(server.shutdown_timeout) + 10,
    )
    # Uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was there before it; a no-op one makes a graceful shutdown exit with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    DrainingServer(config, served, server.shutdown_timeout).run()


class DrainingServer(uvicorn.Server):
    """Drains the engine while uvicorn waits for open connections: requests still running after
    the timeout end with an error event, so no response is left half-written."""

    def __init__(self, config: uvicorn.Config, served: ServedModel, timeout: float):
        super().__init__(config)
        self.served = served
        self.timeout = timeout

    async def shutdown(self, sockets=None) -> None:
        drain = asyncio.create_task(asyncio.to_thread(self.served.engine.shutdown, self.timeout))
        await super().shutdown(sockets)
        await drain
