"""Storage servers on loopback for the deployment tests, one each per session: moto's S3
server and the Supabase Storage imitation (tests/support/storage_server.py); `make_backend`
opens a fresh bucket on the local folder, S3 or Supabase backend (support.deploy.open_backend_for)."""

from __future__ import annotations

from typing import Callable

import pytest
from support.deploy import open_backend_for
from support.storage_server import StorageServer

BACKENDS = ["local", "s3", "supabase"]


@pytest.fixture(scope="session")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # binds a port of its own
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def storage_server(tmp_path_factory):
    server = StorageServer(tmp_path_factory.mktemp("supabase-storage") / "root").start()
    yield server
    server.kill()


@pytest.fixture
def make_backend(request, tmp_path) -> Callable[[str], object]:
    opened: list = []

    def make(kind: str) -> object:
        b = open_backend_for(kind, tmp_path, request)
        opened.append(b)
        return b

    yield make
    for b in opened:
        b.close()


@pytest.fixture(params=BACKENDS)
def backend(request, make_backend):
    return make_backend(request.param)
