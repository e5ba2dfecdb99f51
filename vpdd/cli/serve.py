"""``vpdd serve``: serve the Prefect flows of a checkout (and optionally a local Prefect server).

The library never imports Prefect, not even lazily: this command starts ``python flows/serve.py`` (the
flows' own entry point, in ``flows/`` of the checkout) as a subprocess with the checkout as its working
directory, so the deployments' entrypoints read ``flows/<file>.py:<flow>`` and the flows run the DVC
pipeline of that checkout. A subprocess also keeps ``flows/`` (a plain folder, not a package) off this
process's ``sys.path``.

``--with-server`` first starts ``prefect server start`` bound to ``--host``/``--port`` (SQLite under
``PREFECT_HOME``, default ``~/.prefect``), sets ``PREFECT_API_URL`` and ``PREFECT_UI_API_URL`` (without the
latter the UI on a non-default port calls the API on port 4200 and shows nothing) and waits until
``/api/health`` answers. Ctrl-C or SIGTERM stops the serve process (in-flight flow runs are cancelled),
then the server.

Refused with one line and exit code 2, starting nothing: a second ``vpdd serve`` against the same checkout
while one runs (an exclusive lock on a file named after the checkout, in the temporary folder: two
runners would each be a DVC writer), and ``--with-server`` on a ``--host``/``--port`` already in use
(another server's health check would otherwise be taken for this one's).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from vpdd.cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the Prefect flows (deployments runnable from the Prefect UI)")
    p.add_argument("--repo", default=".", help="the checkout whose flows/ and DVC pipeline to serve (default: .)")
    p.add_argument("--name", default="local", help="deployment name (default: local)")
    p.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: one DVC writer)")
    p.add_argument("--with-server", action="store_true", help="also start a local Prefect server")
    p.add_argument("--host", default="127.0.0.1", help="with --with-server: address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4200, help="with --with-server: port (default 4200)")
    p.set_defaults(func=_serve)


def _stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    # SIGTERM, not SIGINT: both shut down cleanly on it (the serve process cancels its in-flight flow runs),
    # and a process started in the background of a non-interactive shell ignores SIGINT.
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the Prefect server did not answer {url} within {timeout:.0f} s")


def lock_path(repo: Path) -> Path:
    digest = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"vpdd-serve-{digest}.lock"


@contextlib.contextmanager
def serve_lock(repo: Path):
    """Hold the checkout's serve lock for the block; :class:`UserError` when another process holds it."""
    import fcntl

    path = lock_path(repo)
    f = open(path, "a+")  # noqa: SIM115 (held for the block)
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"{repo} is already served (pid {holder}, lock {path}); one serve process per "
                            "checkout keeps one DVC writer. Stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield path
    finally:
        f.close()


def check_port_free(host: str, port: int) -> None:
    """:class:`UserError` when ``host:port`` cannot be bound (another server listens there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UserError(f"{host}:{port} is already in use ({err.strerror}); stop what listens there or pass "
                            "another --port") from None


def _serve(args: argparse.Namespace) -> int:
    repo = Path(args.repo).resolve()
    script = repo / "flows" / "serve.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script}: no flows to serve (--repo must be a vpdd checkout)")
    with serve_lock(repo):
        if args.with_server:
            check_port_free(args.host, args.port)
        return _run(args, repo, script)


def _run(args: argparse.Namespace, repo: Path, script: Path) -> int:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = serving = None
    stop = {"signal": None}

    def on_term(signum, _frame):
        stop["signal"] = signum
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        if args.with_server:
            api = f"http://{args.host}:{args.port}/api"
            env["PREFECT_API_URL"] = env["PREFECT_UI_API_URL"] = api
            server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", args.host,
                                       "--port", str(args.port)], env=env)
            took = _wait_healthy(f"{api}/health", server)
            print(f"Prefect server up in {took:.1f} s: UI http://{args.host}:{args.port}  API {api}", flush=True)
        elif not env.get("PREFECT_API_URL"):
            print("PREFECT_API_URL is not set: unless your Prefect profile sets it, the flows are served against a "
                  "temporary server with no UI. Use --with-server, or start a server and export PREFECT_API_URL "
                  "(and PREFECT_UI_API_URL on a non-default port).", file=sys.stderr, flush=True)
        serving = subprocess.Popen([sys.executable, str(script), "--name", args.name, "--limit", str(args.limit)],
                                   cwd=repo, env=env)
        return serving.wait()
    except KeyboardInterrupt:
        return 0 if stop["signal"] is None else 128 + stop["signal"]
    finally:
        _stop(serving)
        _stop(server)
        signal.signal(signal.SIGTERM, old)
