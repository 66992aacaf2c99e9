"""Serving any API sandbox (an ASGI app) over real HTTP: a background-thread server for tests and
benchmarks, and the uvicorn config the blocking CLI runners share."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

import uvicorn

__all__ = ["serve_in_thread", "uvicorn_config"]


def uvicorn_config(app: Any, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    opts: dict[str, Any] = dict(
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="auto",  # httptools when installed (faster for large bodies), else h11
        date_header=False,  # the sandbox sends its own Date (consistent with Expires)
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=3,
    )
    opts.update(kwargs)
    return uvicorn.Config(app, host=host, port=port, **opts)


@contextlib.contextmanager
def serve_in_thread(
    sandbox: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 15.0,
    **uvicorn_kwargs: Any,
) -> Iterator[str]:
    """Serve ``sandbox`` (an object with an ``app`` attribute, or any ASGI app) with uvicorn in a daemon thread.

    Yields the base URL (``http://127.0.0.1:PORT``; ``port=0`` picks a free port) once the
    server accepts connections, and shuts it down on exit.
    """
    app = sandbox if callable(sandbox) else sandbox.app  # an ASGI app (a test's wrapper), else a sandbox's
    server = uvicorn.Server(uvicorn_config(app, host, port, **uvicorn_kwargs))
    errors: list[BaseException] = []

    def _run() -> None:
        try:
            server.run()
        except BaseException as exc:  # surfaced to the caller below
            errors.append(exc)

    thread = threading.Thread(target=_run, name=f"sandbox-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"sandbox server failed to start: {errors[0] if errors else 'thread exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("sandbox server did not start in time")
        time.sleep(0.005)
    bound_port = port
    for srv in getattr(server, "servers", []) or []:
        for sock in srv.sockets:
            bound_port = sock.getsockname()[1]
            break
        break
    url_host = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
