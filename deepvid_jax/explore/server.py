"""The explorer's local web server: one page, its static files, a JSON API and a WebSocket.

Starlette + uvicorn: an ASGI app small enough to read, with a WebSocket for the live views. The
page's requests go through one worker per connection that keeps only the newest request of each
kind (a drag sends many; the ones still queued when a newer one arrives are dropped, latest
wins), and `Session.handle` computes one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import threading
import time
from pathlib import Path

from deepvid_jax.explore.state import RequestError, Session

STATIC = Path(__file__).resolve().parent / "static"


def _starlette():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError("deepvid explore needs starlette and uvicorn: pip install "
                           "'deepvid_jax[explore]' (or starlette uvicorn websockets).") from e


def make_app(session: Session, static_dir: str | Path = STATIC):
    """The ASGI app serving ``session``: ``/`` the page, ``static/`` its files, ``api/*`` the
    dataset view's data, ``ws`` the live requests."""
    _starlette()
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    static_dir = Path(static_dir)

    async def index(request: Request):
        return FileResponse(static_dir / "index.html", headers={"Cache-Control": "no-store"})

    async def meta(request: Request):
        return JSONResponse(session.meta())

    async def points(request: Request):
        return JSONResponse(session.points())

    async def images(request: Request):
        raw = request.query_params.get("idx", "")
        try:
            idx = [int(v) for v in raw.split(",") if v != ""]
            return JSONResponse(session.image_batch(idx))
        except (RequestError, ValueError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    async def ws(websocket: WebSocket):
        await websocket.accept()
        pending: dict[str, dict] = {}
        order: list[str] = []
        wake = asyncio.Event()

        async def worker():
            while True:
                await wake.wait()
                wake.clear()
                while order:
                    op = order.pop(0)
                    msg = pending.pop(op)
                    reply = {"op": op, "seq": msg.get("seq")}
                    try:
                        reply["result"] = await asyncio.to_thread(session.handle, op, msg)
                    except RequestError as e:
                        session.stats["errors"] += 1
                        reply["error"] = str(e)
                    except Exception as e:  # the server keeps serving; the page shows it
                        session.stats["errors"] += 1
                        reply["error"] = f"{type(e).__name__}: {e}"
                    await websocket.send_text(json.dumps(reply))

        task = asyncio.create_task(worker())
        try:
            while True:
                text = await websocket.receive_text()
                try:
                    msg = json.loads(text)
                    op = msg["op"]
                    if not isinstance(op, str):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    await websocket.send_text(json.dumps(
                        {"op": None, "error": "a request is a JSON object with an 'op'."}))
                    continue
                if op in pending:  # latest wins: the queued one is dropped
                    session.stats["superseded"] = session.stats.get("superseded", 0) + 1
                else:
                    order.append(op)
                pending[op] = msg
                wake.set()
        except WebSocketDisconnect:
            pass
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def favicon(request: Request):
        return Response(status_code=204)

    async def stats(request: Request):
        return JSONResponse(session.stats)

    routes = [Route("/", index), Route("/api/meta", meta), Route("/api/points", points),
              Route("/api/images", images), Route("/api/stats", stats),
              Route("/favicon.ico", favicon),
              WebSocketRoute("/ws", ws),
              Mount("/static", app=StaticFiles(directory=static_dir), name="static")]
    return Starlette(routes=routes)


class PortError(ValueError):
    """The server cannot listen where it was asked to."""


def check_port(host: str, port: int) -> None:
    """`PortError` when ``host:port`` cannot be bound (in use, or not an address here)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortError(f"port {port} on {host} is in use: choose another with --port "
                                "(0 picks a free one).") from e
            raise PortError(f"cannot listen on {host}:{port}: {e.strerror or e}.") from e


class Server:
    """uvicorn serving a session in a thread (`start` returns once it listens; `stop`)."""

    def __init__(self, session: Session, host: str = "127.0.0.1", port: int = 0,
                 static_dir: str | Path = STATIC):
        _starlette()
        import uvicorn

        check_port(host, port)
        self.host = host
        config = uvicorn.Config(make_app(session, static_dir), host=host, port=port,
                                log_level="warning", ws="websockets-sansio", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        port = self._server.servers[0].sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}/"

    def start(self, timeout: float = 30.0) -> str:
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name="deepvid-explore-server")
        self._thread.start()
        t0 = time.monotonic()
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() - t0 > timeout:
                raise OSError("the explorer's server did not start.")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
