"""The Supabase Storage imitation (tests/support/storage_server.py) answers as the real server
(supabase/storage v1.11, platform-facts.md) does, point by point, over raw HTTP: what the
deployment tests exercise is what production does."""

from __future__ import annotations

import hashlib
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import pytest
import requests
from support.storage_server import StorageServer, make_jwt

pytestmark = pytest.mark.integration

GLOBAL_LIMIT = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = StorageServer(tmp_path_factory.mktemp("imitation") / "root", file_size_limit=GLOBAL_LIMIT).start()
    s.create_bucket("b")
    s.create_bucket("small", file_size_limit=100)
    yield s
    s.kill()


def _headers(server: StorageServer, key: str | None = None, **extra) -> dict:
    """The JWT in Authorization; the gateway's `apikey` one of the project's keys."""
    key = key or server.service_key
    apikey = key if key in (server.service_key, server.anon_key) else server.anon_key
    return {"apikey": apikey, "Authorization": f"Bearer {key}", **extra}


def _url(server: StorageServer, path: str) -> str:
    return server.storage_url + path


def _put(server: StorageServer, bucket: str, key: str, data: bytes, **headers) -> requests.Response:
    return requests.post(_url(server, f"object/{bucket}/{quote(key)}"), data=data, timeout=10,
                         headers=_headers(server, **{"Content-Type": "text/plain", "x-upsert": "true", **headers}))


def test_error_body_has_status_code_error_and_message_and_no_code(server) -> None:
    r = requests.get(_url(server, "object/b/no/such.txt"), headers=_headers(server), timeout=10)
    assert r.status_code == 400
    assert r.json() == {"statusCode": "404", "error": "not_found", "message": "Object not found"}
    r = requests.get(_url(server, "bucket/no-such-bucket"), headers=_headers(server), timeout=10)
    assert (r.status_code, r.json()) == (400, {"statusCode": "404", "error": "Bucket not found",
                                               "message": "Bucket not found"})


def test_missing_authorization_header_answers_400_with_the_servers_message(server) -> None:
    r = requests.get(_url(server, "bucket/b"), headers={"apikey": server.service_key}, timeout=10)
    assert r.status_code == 400
    assert r.json() == {"statusCode": "400", "error": "Error",
                        "message": "headers must have required property 'authorization'"}


def test_unknown_route_answers_404_with_a_numeric_status_code(server) -> None:
    r = requests.get(_url(server, "nothing/here"), headers=_headers(server), timeout=10)
    assert r.status_code == 404
    assert r.json() == {"statusCode": 404, "error": "Not Found", "message": "Route GET:/nothing/here not found"}


def test_without_the_gateway_the_gateway_prefix_is_an_unknown_route(tmp_path) -> None:
    s = StorageServer(tmp_path / "root", gateway=False).start()
    try:
        r = requests.get(f"{s.url}/storage/v1/bucket/b", headers=_headers(s), timeout=10)
        assert (r.status_code, r.json()["statusCode"]) == (404, 404)
        assert r.json()["message"] == "Route GET:/storage/v1/bucket/b not found"
        assert requests.get(f"{s.url}/bucket", headers=_headers(s), timeout=10).json() == []  # at the root
    finally:
        s.kill()


def test_upload_answers_id_and_key(server) -> None:
    r = _put(server, "b", "up/one.txt", b"1")
    assert r.status_code == 200 and set(r.json()) == {"Id", "Key"} and r.json()["Key"] == "b/up/one.txt"


def test_listing_puts_folders_first_with_null_ids(server) -> None:
    for key in ("l/a.txt", "l/zz/x.txt", "l/m.txt", "l/b/y.txt"):
        assert _put(server, "b", key, b"x").status_code == 200
    r = requests.post(_url(server, "object/list/b"), json={"prefix": "l", "sortBy": {"column": "name", "order": "asc"}},
                      headers=_headers(server), timeout=10)
    entries = r.json()
    assert [e["name"] for e in entries] == ["b", "zz", "a.txt", "m.txt"]
    assert [e["id"] is None for e in entries] == [True, True, False, False]


def test_listing_and_deleting_with_an_anon_key_or_a_missing_bucket_answer_empty_lists(server) -> None:
    assert _put(server, "b", "rls/keep.txt", b"k").status_code == 200
    for key, bucket in ((server.anon_key, "b"), (server.service_key, "no-such-bucket")):
        listed = requests.post(_url(server, f"object/list/{bucket}"), json={"prefix": "rls"},
                               headers=_headers(server, key), timeout=10)
        assert (listed.status_code, listed.json()) == (200, [])
        deleted = requests.delete(_url(server, f"object/{bucket}"), json={"prefixes": ["rls/keep.txt"]},
                                  headers=_headers(server, key), timeout=10)
        assert (deleted.status_code, deleted.json()) == (200, [])
    assert requests.get(_url(server, "object/b/rls/keep.txt"), headers=_headers(server), timeout=10).content == b"k"


def test_an_object_the_key_cannot_see_is_not_found(server) -> None:
    assert _put(server, "b", "hidden.txt", b"h").status_code == 200
    r = requests.get(_url(server, "object/info/authenticated/b/hidden.txt"), headers=_headers(server, server.anon_key),
                     timeout=10)
    assert (r.status_code, r.json()["statusCode"], r.json()["error"]) == (400, "404", "not_found")


def test_a_jwt_without_a_role_sees_no_private_bucket(server) -> None:
    roleless = make_jwt(server.jwt_secret, None)
    r = requests.get(_url(server, "bucket/b"), headers=_headers(server, roleless), timeout=10)
    assert r.json() == {"statusCode": "404", "error": "Bucket not found", "message": "Bucket not found"}
    listed = requests.post(_url(server, "object/list/b"), json={"prefix": ""},
                           headers=_headers(server, roleless), timeout=10)
    assert listed.json() == []


def test_object_info_has_empty_metadata_and_no_bucket_id(server) -> None:
    assert _put(server, "b", "info/plain.txt", b"abc").status_code == 200
    info = requests.get(_url(server, "object/info/b/info/plain.txt"), headers=_headers(server), timeout=10).json()
    assert info["metadata"] == {} and "bucket_id" not in info
    assert set(info) == {"id", "name", "version", "size", "content_type", "cache_control", "etag", "metadata",
                         "last_modified", "created_at"}
    assert (info["size"], info["content_type"], info["cache_control"]) == (3, "text/plain", "no-cache")


def test_get_has_an_unquoted_etag_and_an_http_date_last_modified(server) -> None:
    assert _put(server, "b", "get/e.txt", b"etag me", **{"cache-control": "max-age=60"}).status_code == 200
    r = requests.get(_url(server, "object/b/get/e.txt"), headers=_headers(server), timeout=10)
    assert r.headers["ETag"] == hashlib.md5(b"etag me").hexdigest()        # no quotes
    assert r.headers["Last-Modified"].endswith(" GMT")
    assert parsedate_to_datetime(r.headers["Last-Modified"]).tzinfo is not None
    assert r.headers["Cache-Control"] == "max-age=60"


def test_head_content_length_is_the_object_size(server) -> None:
    assert _put(server, "b", "head/h.bin", b"z" * 1234).status_code == 200
    r = requests.head(_url(server, "object/b/head/h.bin"), headers=_headers(server), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Length"] == "1234" and r.content == b""


@pytest.mark.parametrize("key", ["keys/a[1].txt", "keys/b]c.txt", "keys/x#y.txt", "keys/é.txt", "keys/100%.txt"])
def test_invalid_keys_are_refused_with_invalid_key(server, key) -> None:
    r = _put(server, "b", key, b"x")
    assert r.status_code == 400
    assert r.json() == {"statusCode": "400", "error": "InvalidKey", "message": f"Invalid key: {key}"}


def test_every_character_of_the_rule_is_accepted(server) -> None:
    key = "keys/Az09_!-.*'() &$@=;:+,?.txt"
    assert _put(server, "b", key, b"ok").status_code == 200
    assert requests.get(_url(server, f"object/b/{quote(key)}"), headers=_headers(server), timeout=10).content == b"ok"


def test_global_and_bucket_size_limits_answer_413(server) -> None:
    over_global = _put(server, "b", "big/global.bin", b"x" * (GLOBAL_LIMIT + 1))
    assert over_global.status_code == 413
    assert over_global.json() == {"statusCode": "413", "error": "Payload too large",
                                  "message": "The object exceeded the maximum allowed size"}
    assert _put(server, "b", "big/at-global.bin", b"x" * GLOBAL_LIMIT).status_code == 200
    assert _put(server, "small", "big/bucket.bin", b"x" * 101).status_code == 413
    assert _put(server, "small", "big/at-bucket.bin", b"x" * 100).status_code == 200
