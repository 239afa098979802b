"""What both page benches do the same way: pick a free port, wait for the page, press *Start training*
and wait for the run to complete, in Debian's Chromium driven by Playwright."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Any

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RUN_TIMEOUT_MS = 1_800_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, why_failed: Callable[[], str]) -> None:
    """Until the page answers; SystemExit with ``why_failed()`` (e.g. the log's tail) if the server ends first."""
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the page did not start (exit code {server.returncode}):\n{why_failed()}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)


def open_train_tab(page: Any, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="2 · Train").click()


def start_and_wait_for_completion(page: Any) -> None:
    page.locator("#start-btn").click()
    page.wait_for_function(
        "() => document.querySelector('#run-progress')?.dataset.status === 'completed'", timeout=RUN_TIMEOUT_MS,
        polling=500,  # twice a second, not every animation frame
    )
