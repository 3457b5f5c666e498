"""Fixtures for the edge client tests: a deployment made by `towerops deploy` (local backend in a
tmp folder), `towerops edge serve` on a loopback port, and Debian's headless Chromium driven by
Playwright (never a downloaded browser). Screenshots go to $TOWEROPS_TEST_ARTIFACTS, else to
<pytest tmp>/artifacts; the tests print where."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from support.edge import BUCKET, CHROMIUM, CHROMIUM_ARGS, MODEL, deploy_env, towerops_deploy
from support.helpers import REPO_ROOT, PortClash, is_port_clash, start_on_free_port, wait_for_port


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests save screenshots (never inside the checkout unless asked to)."""
    path = Path(os.environ.get("TOWEROPS_TEST_ARTIFACTS") or tmp_path_factory.getbasetemp() / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def deployment(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local deployment root (`<root>/model-artifacts/tt/...`) with tiny_model_dir as tt v1.0.0."""
    root = tmp_path_factory.mktemp("edge_deployments")
    towerops_deploy(tiny_model_dir, root, "v1.0.0")
    assert (root / BUCKET / MODEL / "production.json").is_file()
    return root


@pytest.fixture(scope="module")
def edge_serve(deployment: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`towerops edge serve --deployments <root> --model tt --port N` in a subprocess; yields the demo URL."""
    logs = tmp_path_factory.mktemp("edge_serve")

    def start(port: int) -> tuple[subprocess.Popen, int]:
        log = logs / f"serve-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "edge", "serve", "--deployments",
                                     str(deployment), "--model", MODEL, "--port", str(port)], cwd=REPO_ROOT,
                                    env=deploy_env(deployment), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                wait_for_port(port, timeout=1)
                return proc, port
            except TimeoutError:
                continue
        text = log.read_text()
        proc.kill()
        if is_port_clash(text):
            raise PortClash(text[-500:])
        pytest.fail(f"towerops edge serve did not start (exit {proc.poll()}):\n{text[-3000:]}")

    proc, port = start_on_free_port(start)
    try:
        yield f"http://127.0.0.1:{port}/?model={MODEL}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium context (fresh profile) driven by Playwright."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (installs Debian's chromium package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: run `make install` (it is in the dev extras)")
    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 820})
        try:
            yield context
        finally:
            context.close()
