"""``vpdd serve``: a busy port and a second serve process of one checkout are refused, nothing started."""

from __future__ import annotations

import socket
import subprocess

import pytest

from vpdd.cli.serve import serve_lock

from .conftest import run_cli


@pytest.fixture
def no_popen(monkeypatch):
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or pytest.fail(f"started {a}"))
    return started


def test_with_server_on_a_busy_port_is_refused_in_one_line(repo_root, no_popen):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_cli("serve", "--with-server", "--port", port, "--repo", repo_root)
    assert code == 2 and f"127.0.0.1:{port} is already in use" in err
    assert len(err.strip().splitlines()) == 1 and not no_popen


def test_a_second_serve_of_the_same_checkout_is_refused(repo_root, no_popen):
    with serve_lock(repo_root):
        code, err = run_cli("serve", "--repo", repo_root)
    assert code == 2 and "already served" in err and len(err.strip().splitlines()) == 1 and not no_popen
