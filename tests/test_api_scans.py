"""The scan API against a real `ralf-cli serve` (uvicorn on 127.0.0.1) and the real Redis, without a
worker: keys and scopes, one key never reading another's job, the size cap while streaming, uploads
cut off halfway, content types, idempotency, SSRF refusals, problem details, limits, pages, docs."""

from __future__ import annotations

import json
import re
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from typer.testing import CliRunner

from api_testing import api_env, api_server, bearer, is_problem, make_key, upload, uvicorn_in_thread
from cli.main import app
from worker_testing import REDIS_URL, deployment_environment, requires_redis, wait_for
from worker.housekeeping import delete_prefixed_keys

pytestmark = requires_redis
PREFIX = f"api{uuid.uuid4().hex[:8]}"
CAP = 256 * 1024


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-media")


@pytest.fixture(scope="module")
def env(media: Path) -> Iterator[dict[str, str]]:
    # RALF_URL_ALLOW empty: no internal address is open (worker_testing opens 127.0.0.1 for its servers).
    yield api_env(PREFIX, media, RALF_API_MAX_UPLOAD_BYTES=str(CAP), RALF_URL_ALLOW="", RALF_WEBHOOK_SECRET="s" * 32)
    delete_prefixed_keys(redis.Redis.from_url(REDIS_URL), PREFIX)


@pytest.fixture(scope="module")
def base(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_server(env, tmp_path_factory.mktemp("api-log") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def submitter(env: dict[str, str]) -> str:
    return make_key(env, "submit", "uploader-a")


def video_bytes(tag: str) -> bytes:
    """Distinct content per tag (the service never decodes: no worker runs in this module)."""
    return b"\x00\x00\x00\x18ftypmp42" + tag.encode() * 64


def uploads_left(media: Path) -> list[str]:
    folder = media / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# -- health, readiness, schema and docs --------------------------------------------------------------


def test_health_readiness_openapi_and_offline_docs(base: str) -> None:
    assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 503 and ready.json()["detail"] == "no live worker"  # no worker in this module
    schema = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/scans", "/v1/scans/{job_id}", "/v1/scans/{job_id}/report"} <= set(schema["paths"])
    assert {"Verdict", "ProblemDetail", "ScanRequest", "ScanOverrides"} <= set(schema["components"]["schemas"])
    references = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(schema)))
    assert references and references <= set(schema["components"]["schemas"])  # every $ref resolves
    docs = httpx.get(f"{base}/docs")
    assert docs.status_code == 200 and "default-src 'none'" in docs.headers["content-security-policy"]
    assert "/v1/scans" in docs.text and "<script" not in docs.text
    # Nothing the page would load comes from elsewhere: no src= at all, links only to this server.
    assert " src=" not in docs.text and "cdn" not in docs.text.lower()
    assert all(h.startswith("/") for h in _attribute_values(docs.text, "href"))


def _attribute_values(html: str, name: str) -> list[str]:
    parts = html.split(f'{name}="')[1:]
    return [part.split('"', 1)[0] for part in parts]


# -- keys and scopes ---------------------------------------------------------------------------------


def test_keys_and_scopes(base: str, env: dict[str, str], submitter: str) -> None:
    missing = is_problem(httpx.get(f"{base}/v1/scans"), 401)
    assert "Bearer" in missing["detail"]
    assert httpx.get(f"{base}/v1/scans").headers["www-authenticate"].startswith("Bearer")
    is_problem(httpx.get(f"{base}/v1/scans", headers=bearer("ralf_0000000000000000_" + "x" * 43)), 401)
    forged = submitter[:-4] + ("AAAA" if not submitter.endswith("AAAA") else "BBBB")
    is_problem(httpx.get(f"{base}/v1/scans", headers=bearer(forged)), 401)
    reviewer = make_key(env, "review", "moderator")
    forbidden = is_problem(upload(base, reviewer, video_bytes("scope")), 403)
    assert "submit" in forbidden["detail"]
    assert httpx.get(f"{base}/v1/scans", headers=bearer(submitter)).status_code == 200
    admin = make_key(env, "admin", "ops")
    assert upload(base, admin, video_bytes("admin")).status_code == 202


def test_keys_cli_shows_the_secret_once_and_stores_only_its_hash(env: dict[str, str], base: str) -> None:
    runner = CliRunner()
    with deployment_environment(env):
        created = runner.invoke(app, ["keys", "create", "--scope", "submit", "--name", "cli user", "--json"])
        assert created.exit_code == 0, created.output
        made = json.loads(created.stdout)
        token, key_id = made["key"], made["key_id"]
        listed = runner.invoke(app, ["keys", "list", "--json"])
        assert key_id in listed.stdout and token not in listed.stdout and "secret" not in listed.stdout
        connection = redis.Redis.from_url(REDIS_URL)
        stored = [connection.get(k) or b"" for k in connection.scan_iter(match=f"{PREFIX}:api:key:*")]
        assert stored and all(token.encode() not in value for value in stored)
        assert httpx.get(f"{base}/v1/scans", headers=bearer(token)).status_code == 200
        revoked = runner.invoke(app, ["keys", "revoke", key_id])
        assert revoked.exit_code == 0 and token not in revoked.output
    is_problem(httpx.get(f"{base}/v1/scans", headers=bearer(token)), 401)


# -- ownership: a key never reads another key's job ---------------------------------------------------


def test_a_key_never_reads_another_keys_job_and_shared_content_is_one_job(
    base: str, env: dict[str, str], submitter: str
) -> None:
    other = make_key(env, "submit", "uploader-b")
    first = upload(base, submitter, video_bytes("shared"), name="alice-private-name.mp4")
    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    assert first.headers["location"] == f"/v1/scans/{job_id}"
    for path in (f"/v1/scans/{job_id}", f"/v1/scans/{job_id}/report"):
        body = is_problem(httpx.get(base + path, headers=bearer(other)), 404)
        assert "alice" not in json.dumps(body)
    is_problem(httpx.delete(f"{base}/v1/scans/{job_id}", headers=bearer(other)), 404)
    assert job_id not in httpx.get(f"{base}/v1/scans", headers=bearer(other)).text
    # The same content from the other key: the same job, answered with the other key's own name only.
    second = upload(base, other, video_bytes("shared"), name="bob.mp4")
    assert second.status_code == 200 and second.json()["id"] == job_id
    assert second.json()["source"] == "bob.mp4" and "alice" not in second.text
    assert second.json()["content"].startswith("sha256:")
    mine = httpx.get(f"{base}/v1/scans/{job_id}", headers=bearer(submitter)).json()
    assert mine["source"] == "alice-private-name.mp4" and "bob" not in json.dumps(mine)


# -- uploads: the cap while streaming, halfway uploads, content types --------------------------------


def _raw_request(base: str, head: str) -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(head.encode())
    return sock


def _multipart_head(base: str, token: str, boundary: str, length_header: str) -> str:
    host = urlsplit(base).netloc
    return (
        f"POST /v1/scans HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{length_header}\r\n"
    )


def _file_part_head(boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_the_size_cap_is_enforced_while_streaming(base: str, submitter: str, media: Path) -> None:
    boundary = "capboundary"
    sock = _raw_request(base, _multipart_head(base, submitter, boundary, "Transfer-Encoding: chunked\r\n"))
    sock.sendall(_chunk(_file_part_head(boundary)))
    sent, answer = 0, b""
    block = b"\x01" * 16384
    try:
        while sent < 64 * CAP and not answer:  # the client would send 16 MiB: the server must stop it long before
            sock.sendall(_chunk(block))
            sent += len(block)
            if select.select([sock], [], [], 0.05)[0]:  # time for the server to read what was sent
                answer = sock.recv(65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    if not answer:
        answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer
    assert sent < 8 * CAP, f"the server read {sent} bytes of a {CAP}-byte cap before answering"
    wait_for(
        lambda: uploads_left(media) == [p for p in uploads_left(media) if not p.startswith(".incoming")],
        10,
        "no partial upload",
    )
    # A declared Content-Length above the cap is refused before any of the body is read.
    declared = httpx.post(
        f"{base}/v1/scans", headers={**bearer(submitter), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=b"x" * (CAP + 70 * 1024),
    )  # fmt: skip
    is_problem(declared, 413)


def test_an_upload_that_stops_halfway_leaves_no_file_and_no_job(base: str, env: dict[str, str], media: Path) -> None:
    quitter = make_key(env, "submit", "quitter")
    boundary = "halfway"
    sock = _raw_request(base, _multipart_head(base, quitter, boundary, f"Content-Length: {CAP // 2}\r\n"))
    sock.sendall(_file_part_head(boundary) + b"\x02" * (CAP // 8))
    time.sleep(0.5)
    sock.close()  # gone mid-body
    wait_for(lambda: not any(p.startswith(".incoming") for p in uploads_left(media)), 20, "the partial file removed")
    assert httpx.get(f"{base}/v1/scans", headers=bearer(quitter)).json()["items"] == []
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_wrong_content_types(base: str, submitter: str) -> None:
    plain = httpx.post(f"{base}/v1/scans", headers={**bearer(submitter), "Content-Type": "text/plain"}, content=b"hi")
    is_problem(plain, 415)
    is_problem(upload(base, submitter, b"not a video", name="notes.txt", content_type="text/plain"), 415)
    is_problem(upload(base, submitter, b"", name="empty.mp4"), 400)


# -- URLs: enqueue's rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://2130706433/x.mp4",  # 127.0.0.1 spelt as a number
        "http://[::ffff:10.0.0.1]/x.mp4",
        "http://localhost/x.mp4",
        "http://user:secret@example.com/x.mp4",
        "file:///etc/passwd",
        "/etc/passwd",
    ],
)
def test_urls_follow_the_enqueue_rules(base: str, submitter: str, url: str) -> None:
    refused = httpx.post(f"{base}/v1/scans", headers=bearer(submitter), json={"url": url})
    body = is_problem(refused, 400)
    assert "secret" not in body["detail"]


def test_callback_urls_follow_the_same_rules(base: str, submitter: str) -> None:
    body = {"url": "https://example.org/cb.mp4", "callback_url": "http://169.254.169.254/hook"}
    assert (
        "not a public address"
        in is_problem(httpx.post(f"{base}/v1/scans", headers=bearer(submitter), json=body), 400)["detail"]
    )
    refused = upload(base, submitter, video_bytes("callback"), callback_url="http://10.1.2.3/hook")
    is_problem(refused, 400)
    body["callback_url"] = "https://hooks.example.org/ralf"
    assert httpx.post(f"{base}/v1/scans", headers=bearer(submitter), json=body).status_code == 202


def test_json_bodies_are_capped_while_reading(base: str, submitter: str) -> None:
    huge = b'{"url": "https://example.org/' + b"a" * (128 * 1024) + b'"}'
    is_problem(
        httpx.post(f"{base}/v1/scans", headers={**bearer(submitter), "Content-Type": "application/json"}, content=huge),
        413,
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        yield huge

    streamed = httpx.post(
        f"{base}/v1/scans", headers={**bearer(submitter), "Content-Type": "application/json"}, content=chunks()
    )
    is_problem(streamed, 413)


def test_a_public_url_is_accepted(base: str, submitter: str) -> None:
    accepted = httpx.post(f"{base}/v1/scans", headers=bearer(submitter), json={"url": "https://example.org/a.mp4"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["kind"] == "url" and accepted.json()["status"] == "queued"
    again = httpx.post(f"{base}/v1/scans", headers=bearer(submitter), json={"url": "https://example.org/a.mp4"})
    assert again.status_code == 200 and again.json()["id"] == accepted.json()["id"]


# -- idempotency ---------------------------------------------------------------------------------------


def test_idempotency_key(base: str, submitter: str, media: Path) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = upload(base, submitter, video_bytes("idem-1"), headers=key)
    replay = upload(base, submitter, video_bytes("idem-1"), headers=key)
    assert first.status_code == 202 and replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"] and replay.headers["idempotent-replayed"] == "true"
    stored = uploads_left(media)
    conflict = is_problem(upload(base, submitter, video_bytes("idem-2"), headers=key), 409)
    assert "Idempotency-Key" in conflict["detail"]
    assert uploads_left(media) == stored  # the refused upload was not kept
    other_options = upload(base, submitter, video_bytes("idem-1"), headers=key, options='{"max_frames": 3}')
    is_problem(other_options, 409)
    url_key = {"Idempotency-Key": f"url-{uuid.uuid4()}"}
    body = {"url": "https://example.org/idem.mp4"}
    assert httpx.post(f"{base}/v1/scans", headers={**bearer(submitter), **url_key}, json=body).status_code == 202
    is_problem(
        httpx.post(
            f"{base}/v1/scans", headers={**bearer(submitter), **url_key}, json={"url": "https://example.org/other.mp4"}
        ),
        409,
    )


# -- problem details -------------------------------------------------------------------------------------


def test_problem_details_for_bad_requests(base: str, submitter: str, media: Path) -> None:
    broken = httpx.post(
        f"{base}/v1/scans", headers={**bearer(submitter), "Content-Type": "application/json"}, content=b"{"
    )
    is_problem(broken, 422)
    unknown = is_problem(
        httpx.post(f"{base}/v1/scans", headers=bearer(submitter), json={"url": "https://e.org/a", "x": 1}), 422
    )
    assert "x" in unknown["detail"]
    bad_options = is_problem(upload(base, submitter, video_bytes("opts"), options='{"max_frames": 0}'), 422)
    assert "max_frames" in bad_options["detail"]
    is_problem(upload(base, submitter, video_bytes("opts"), options="not json"), 422)
    is_problem(httpx.get(f"{base}/v1/scans/{'x' * 300}", headers=bearer(submitter)), 404)
    is_problem(httpx.get(f"{base}/v1/nothing-here", headers=bearer(submitter)), 404)
    is_problem(httpx.get(f"{base}/v1/scans?limit=1000", headers=bearer(submitter)), 422)
    is_problem(httpx.get(f"{base}/v1/scans?cursor=%%%", headers=bearer(submitter)), 400)
    is_problem(httpx.put(f"{base}/v1/scans", headers=bearer(submitter)), 405)
    assert str(media) not in broken.text and str(media) not in json.dumps(unknown)


def test_a_job_still_queued_cannot_be_deleted(base: str, submitter: str) -> None:
    job = upload(base, submitter, video_bytes("queued")).json()
    conflict = is_problem(httpx.delete(f"{base}/v1/scans/{job['id']}", headers=bearer(submitter)), 409)
    assert "queued" in conflict["detail"]


# -- failures inside the service: problems, never internals ------------------------------------------


def test_redis_down_is_a_503_and_an_internal_error_says_nothing(media: Path) -> None:
    from api.app import create_app
    from worker_testing import deployment_settings, free_port

    gone = deployment_settings(PREFIX, media_roots=[media], redis_retries=0).model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    service = create_app(gone)

    @service.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"secret internals at {media}")

    with uvicorn_in_thread(service) as url, httpx.Client(base_url=url) as client:
        answer = client.get("/v1/scans", headers=bearer("ralf_0123456789abcdef_" + "A" * 43))
        body = is_problem(answer, 503)
        assert (
            answer.headers["retry-after"] == "5"
            and "6379" not in json.dumps(body)
            and "127.0.0.1" not in json.dumps(body)
        )
        assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 200
        internal = is_problem(client.get("/boom"), 500)
        assert "secret" not in json.dumps(internal) and "RuntimeError" not in json.dumps(internal)


# -- limits ------------------------------------------------------------------------------------------------


def test_rate_limit_and_daily_quota(base: str, env: dict[str, str]) -> None:
    hasty = make_key(env, "submit", "hasty", rate_per_minute=3)
    answers = [httpx.get(f"{base}/v1/scans", headers=bearer(hasty)) for _ in range(4)]
    if answers[-1].status_code != 429:  # the first three straddled a minute boundary
        answers = [httpx.get(f"{base}/v1/scans", headers=bearer(hasty)) for _ in range(4)]
    assert [a.status_code for a in answers[:3]].count(200) >= 1
    limited = is_problem(answers[-1], 429)
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60 and "rate limit" in limited["detail"]
    frugal = make_key(env, "submit", "frugal", daily_quota=1)
    assert upload(base, frugal, video_bytes("quota-1")).status_code == 202
    over = upload(base, frugal, video_bytes("quota-2"))
    assert "quota" in is_problem(over, 429)["detail"]
    assert 1 <= int(over.headers["retry-after"]) <= 86400


# -- listing ---------------------------------------------------------------------------------------------------


def test_listing_is_paginated_newest_first(base: str, env: dict[str, str]) -> None:
    lister = make_key(env, "submit", "lister")
    made = [upload(base, lister, video_bytes(f"page-{n}"), name=f"p{n}.mp4").json()["id"] for n in range(5)]
    seen, cursor = [], None
    while True:
        page = httpx.get(
            f"{base}/v1/scans", headers=bearer(lister), params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    assert httpx.get(f"{base}/v1/scans", headers=bearer(lister), params={"label": "fake"}).json()["items"] == []
