"""`msewatch serve`: HTTP ingestion and queries over one store, with Prometheus exposition."""

from __future__ import annotations

import ipaddress
import logging

from msewatch.config import Config
from msewatch.errors import InputError
from msewatch.server.app import create_app

__all__ = ["create_app", "is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(db: str, config: Config, *, host: str, port: int, insecure: bool = False, log_level: str = "info",
          sink: str | None = None) -> None:
    """Run the server until SIGINT/SIGTERM; then it stops taking requests and commits the queue.

    `sink` (or `[sink] dir`) is a Parquet lake directory that follows the store (msewatch.lake).
    """
    import dataclasses

    import uvicorn

    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: expected a port number, 0 to 65535.")
    if not config.tokens and not is_loopback(host) and not insecure:
        raise InputError(
            f"refusing to listen on {host} without tokens: configure [[tokens]] in the config file "
            "or MSEWATCH_TOKENS, or pass --insecure to accept unauthenticated traffic."
        )
    from msewatch.store import Store

    if sink:
        config = dataclasses.replace(config, sink=dataclasses.replace(config.sink, dir=sink))
    with Store(db) as store:  # a locked or unreadable store: one clear error before the server starts
        if config.sink.dir:  # and so is a lake directory of another store, or a file
            from msewatch.lake import LakeWriter, store_id

            LakeWriter(store.con, config.sink.dir, store_id(store.con))
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in config.monitor.warnings:
        logging.getLogger("msewatch.config").warning("%s", warning)
    app = create_app(db, config)
    uv = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    uvicorn.Server(uv).run()
