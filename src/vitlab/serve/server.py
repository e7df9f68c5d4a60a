"""Running the application with uvicorn, after checking that the address can be served.

The port is taken (bound and listened on) before the model loads, so a port in use or not
permitted, or a host that is not this machine's, is a one-line error at once rather than
uvicorn's log after the loading; `--port 0` is resolved to the free port the system gives,
which is the one printed and served. The port is handed to uvicorn just before it binds it.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from vitlab.errors import ConfigError, MissingDependencyError

NEEDS = "vitlab serve needs FastAPI and uvicorn: pip install 'vitlab[serve]'"


def require_uvicorn() -> Any:
    """The uvicorn module, or the one-line hint that installs it."""
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError(NEEDS) from None
    return uvicorn


def reserve(host: str, port: int) -> socket.socket:
    """A socket listening on `host:port` (port 0: a free one), held while the model loads; a
    one-line ConfigError when the address cannot be served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen()
    except OSError as e:
        sock.close()
        raise ConfigError(_why_not(host, port, e)) from None
    return sock


def _why_not(host: str, port: int, e: OSError) -> str:
    """What was wrong with `host:port`, and what to do."""
    if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        return (
            f"--host {host} is not an address of this machine ({e.strerror}); use 127.0.0.1 "
            "(this machine only) or 0.0.0.0 (every network interface)"
        )
    if e.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another server?); stop that one, or "
            "choose another port with --port (--port 0 takes any free one)"
        )
    if e.errno == errno.EACCES:
        return (
            f"listening on port {port} is not permitted here (ports below 1024 need "
            "privileges); choose another with --port, e.g. --port 8000"
        )
    return f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port"


def address(sock: socket.socket, host: str) -> str:
    """The URL `sock` serves, with the port it really holds."""
    port = sock.getsockname()[1]
    return (
        f"http://[{host}]:{port}/" if sock.family == socket.AF_INET6 else f"http://{host}:{port}/"
    )


def serve(app: Any, host: str, sock: socket.socket, quiet: bool = False) -> None:
    """Serve `app` on the port `sock` reserved (closed here, just before uvicorn binds it)."""
    uvicorn = require_uvicorn()
    port = sock.getsockname()[1]
    sock.close()
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info")
