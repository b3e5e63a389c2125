"""Who may use the service (issue 23, item 3): API keys, the per-key rate limit, the order of 401, 429 and 503,
the access log's key id, CORS only on request, and `serve` refusing a non-loopback host without keys before it
binds anything. Through FastAPI's test client and the CLI's Python API; nothing binds but 127.0.0.1."""

import json
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import TinyRun, write_image
from pneumoscan.cli.main import main
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.bundle import load_bundle
from pneumoscan.serving.keys import KeyStore, StoredKey, append_key, digest, new_key, open_key_store
from pneumoscan.serving.ratelimit import RateLimiter
from pneumoscan.serving.service import ServiceConfig, create_app

fastapi_testclient = pytest.importorskip("fastapi.testclient")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def bundle(tiny_run: TinyRun):  # type: ignore[no-untyped-def]
    return load_bundle(tiny_run.out_dir)


def _keyed(tmp_path: Path, *ids: str) -> tuple[Path, dict[str, str]]:
    """A key file holding a new key for each id, and the keys."""
    path, keys = tmp_path / "keys.txt", {}
    for key_id in ids:
        keys[key_id] = new_key()
        append_key(path, StoredKey(key_id, digest(keys[key_id])))
    return path, keys


def _client(bundle: Any, keys: KeyStore | None = None, **config: Any):  # type: ignore[no-untyped-def]
    return fastapi_testclient.TestClient(create_app(bundle, name="tiny", config=ServiceConfig(**config), keys=keys))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _film(tmp_path: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", ("film.png", write_image(tmp_path / "film.png", value=120, size=(64, 64)).read_bytes(),
                       "image/png"))]


def test_without_a_valid_key_everything_but_the_page_and_health_is_401(bundle: Any, tmp_path: Path) -> None:
    path, keys = _keyed(tmp_path, "alice")
    with _client(bundle, KeyStore(path, [])) as client:
        missing = client.get("/v1/model")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert "invalid_token" not in missing.headers["www-authenticate"]
        wrong = client.get("/v1/model", headers=_bearer(new_key()))
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert client.get("/v1/model", headers={"Authorization": f"Basic {keys['alice']}"}).status_code == 401
        assert client.post("/v1/predict", files=_film(tmp_path)).status_code == 401
        for path_ in ("/docs", "/openapi.json", "/no-such-path"):
            assert client.get(path_).status_code == 401, path_
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["auth"] == "bearer"
        assert client.get("/").status_code == 200  # the page loads, to ask for the key
        assert client.get("/v1/model", headers=_bearer(keys["alice"])).json()["arch"] == "baseline"
        assert client.get("/openapi.json", headers=_bearer(keys["alice"])).status_code == 200
        assert client.get("/v1/model", headers={"authorization": f"bearer  {keys['alice']} "}).status_code == 200


def test_the_right_key_predicts(bundle: Any, tmp_path: Path) -> None:
    path, keys = _keyed(tmp_path, "alice")
    with _client(bundle, KeyStore(path, [])) as client:
        response = client.post("/v1/predict", files=_film(tmp_path), headers=_bearer(keys["alice"]))
    assert response.status_code == 200 and 0.0 <= response.json()["results"][0]["probability"] <= 1.0


def test_without_keys_the_service_is_open_and_says_so(bundle: Any) -> None:
    with _client(bundle) as client:
        assert client.get("/health").json()["auth"] == "none" and client.get("/v1/model").status_code == 200


def test_the_key_file_is_re_read_when_keys_new_appends_or_a_line_is_removed(
        bundle: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, keys = _keyed(tmp_path, "alice")
    clock = Clock()
    with _client(bundle, KeyStore(path, [], clock=clock)) as client:
        assert main(["keys", "new", "--file", str(path), "--id", "bob"]) == 0
        bob = capsys.readouterr().out.strip()
        assert client.get("/v1/model", headers=_bearer(bob)).status_code == 401  # looked at once a second at most
        clock.now += 1.5
        assert client.get("/v1/model", headers=_bearer(bob)).status_code == 200
        path.write_text(path.read_text().splitlines()[1] + "\n")  # alice revoked
        clock.now += 1.5
        assert client.get("/v1/model", headers=_bearer(keys["alice"])).status_code == 401
        assert client.get("/v1/model", headers=_bearer(bob)).status_code == 200
        path.write_text("bob not-a-digest\n")  # a broken file refuses every file key (fail closed)
        clock.now += 1.5
        assert client.get("/v1/model", headers=_bearer(bob)).status_code == 401


def test_the_rate_limit_answers_429_with_retry_after_per_key(bundle: Any, tmp_path: Path) -> None:
    path, keys = _keyed(tmp_path, "alice", "bob")
    with _client(bundle, KeyStore(path, []), rate_limit_per_minute=2) as client:
        statuses = [client.get("/v1/model", headers=_bearer(keys["alice"])).status_code for _ in range(2)]
        limited = client.get("/v1/model", headers=_bearer(keys["alice"]))
        assert statuses == [200, 200] and limited.status_code == 429
        assert limited.headers["retry-after"] == "30" and "rate limit" in limited.json()["detail"]
        assert client.get("/v1/model", headers=_bearer(keys["bob"])).status_code == 200  # each key its own bucket
        assert client.get("/health").status_code == 200  # open paths take no token


def test_the_token_bucket_refills_and_zero_turns_it_off() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock)  # one a second, up to 60 at once
    assert all(limiter.take("a") is None for _ in range(60)) and limiter.take("a") == 1
    clock.now += 1.0
    assert limiter.take("a") is None and limiter.take("a") == 1
    assert all(RateLimiter(0).take("a") is None for _ in range(1000))


def test_the_access_log_names_the_key_id_never_the_key_digest_or_file(bundle: Any, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    path, keys = _keyed(tmp_path, "alice")
    with _client(bundle, KeyStore(path, [])) as client, caplog.at_level(logging.INFO, logger="pneumoscan.access"):
        assert client.post("/v1/predict", files=_film(tmp_path), headers=_bearer(keys["alice"])).status_code == 200
        assert client.get("/v1/model").status_code == 401
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "pneumoscan.access"]
    assert [(line["path"], line["status"], line["key"]) for line in lines] == [("/v1/predict", 200, "alice"),
                                                                               ("/v1/model", 401, None)]
    everything = " ".join(r.getMessage() for r in caplog.records)
    assert keys["alice"] not in everything and digest(keys["alice"]) not in everything
    assert "keys.txt" not in everything and "film.png" not in everything


def test_the_checks_run_in_order_401_then_429_then_503(bundle: Any, tmp_path: Path) -> None:
    path, keys = _keyed(tmp_path, "alice")
    with _client(bundle, KeyStore(path, []), rate_limit_per_minute=1) as client:
        admission = client.app.state.admission
        ticket = admission.try_admit(10_000.0)  # the scorer is "busy": admission refuses whatever comes next
        ticket.body_received()
        try:
            assert client.post("/v1/predict", files=_film(tmp_path)).status_code == 401
            assert admission.refused == 0  # a client without a key never reached the admission queue
            busy = client.post("/v1/predict", files=_film(tmp_path), headers=_bearer(keys["alice"]))
            assert busy.status_code == 503 and admission.refused == 1
            limited = client.post("/v1/predict", files=_film(tmp_path), headers=_bearer(keys["alice"]))
            assert limited.status_code == 429 and "retry-after" in limited.headers and admission.refused == 1
        finally:
            ticket.release()


def test_cors_headers_only_for_the_named_origins(bundle: Any, tmp_path: Path) -> None:
    preflight = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    with _client(bundle) as client:
        assert "access-control-allow-origin" not in client.options("/v1/predict", headers=preflight).headers
        assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": preflight["Origin"]}
                                                               ).headers
    path, keys = _keyed(tmp_path, "alice")
    with _client(bundle, KeyStore(path, []), cors_origins=("https://app.example.org",)) as client:
        answer = client.options("/v1/predict", headers=preflight)  # a preflight carries no key: not a 401
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == preflight["Origin"]
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        model = client.get("/v1/model", headers={"Origin": preflight["Origin"], **_bearer(keys["alice"])})
        assert model.status_code == 200 and model.headers["access-control-allow-origin"] == preflight["Origin"]
        other = client.get("/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def _resolving(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> None:
    """socket.getaddrinfo answering from `table` (no DNS in tests)."""
    def fake(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
                for a in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.fixture
def no_binding(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """uvicorn.run replaced: a test fails if `serve` would bind where it must not; the calls are recorded."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.delenv("PNEUMOSCAN_API_KEYS", raising=False)
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "scanner.example", "mixed.example", ""])
def test_serve_refuses_a_non_loopback_host_without_keys_before_binding(
        host: str, tiny_run: TinyRun, no_binding: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _resolving(monkeypatch, {"scanner.example": ["10.1.2.3"], "mixed.example": ["127.0.0.1", "192.168.1.9"]})
    assert main(["serve", "--model", str(tiny_run.out_dir), "--engine", "torch", "--host", host]) == 2
    err = capsys.readouterr().err
    assert no_binding == [] and "reachable from other machines" in err and "--api-keys" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_serve_takes_loopback_names_without_keys_and_any_host_with_keys(
        tiny_run: TinyRun, no_binding: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    _resolving(monkeypatch, {"localhost": ["127.0.0.1", "::1"]})
    model = ["serve", "--model", str(tiny_run.out_dir), "--engine", "torch"]
    for host in ("localhost", "127.0.0.1", "::1", "127.0.0.2"):
        assert main([*model, "--host", host]) == 0, host
    path, _ = _keyed(tmp_path, "alice")
    assert main([*model, "--host", "0.0.0.0", "--api-keys", str(path)]) == 0
    monkeypatch.setenv("PNEUMOSCAN_API_KEYS", f"ci {digest(new_key())}")
    assert main([*model, "--host", "::"]) == 0
    assert [call["host"] for call in no_binding] == ["localhost", "127.0.0.1", "::1", "127.0.0.2", "0.0.0.0", "::"]


def test_serve_refuses_bad_key_settings_in_one_line(tiny_run: TinyRun, no_binding: list[dict[str, Any]],
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = ["serve", "--model", str(tiny_run.out_dir), "--engine", "torch"]
    pasted = tmp_path / "pasted.txt"
    pasted.write_text(f"alice {new_key()}\n")  # a key pasted where its digest belongs
    cases = [([*model, "--api-keys", str(tmp_path / "none.txt")], "no such API key file"),
             ([*model, "--api-keys", str(pasted)], "entry 1: expected '<key id> <SHA-256"),
             ([*model, "--cors-origin", "https://app.example.org/"], "without a path or trailing slash"),
             ([*model, "--rate-limit", "-1"], "--rate-limit must be at least 0")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "psk_" not in err, (argv, err)
    monkeypatch.setenv("PNEUMOSCAN_API_KEYS", "alice")
    assert main(model) == 2 and "PNEUMOSCAN_API_KEYS, entry 1" in capsys.readouterr().err
    assert no_binding == []


def test_keys_from_the_environment_are_digests_and_join_the_file(tmp_path: Path) -> None:
    path, keys = _keyed(tmp_path, "alice")
    ci = new_key()
    store = open_key_store(path, {"PNEUMOSCAN_API_KEYS": f"ci {digest(ci)},\n"})
    assert store is not None and store.identify(ci) == "ci" and store.identify(keys["alice"]) == "alice"
    assert store.identify(digest(ci)) is None  # the digest itself is not a key
    assert open_key_store(None, {}) is None
    with pytest.raises(PneumoscanError, match="both in PNEUMOSCAN_API_KEYS and in the key file"):
        open_key_store(path, {"PNEUMOSCAN_API_KEYS": f"alice {digest(ci)}"})


def test_keys_new_prints_the_key_once_and_appends_its_digest_to_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "keys.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def keys_new(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pneumoscan", "keys", "new", "--file", str(path), *extra],
                              capture_output=True, text=True, env=env, timeout=60, check=False)

    first, second = keys_new("--id", "ci"), keys_new()
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    key = first.stdout.strip()
    assert first.stdout == key + "\n" and key.startswith("psk_") and len(key) == 4 + 43
    assert key not in first.stderr and "shown only this once" in first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines == [f"ci {digest(key)}", f"key-1 {digest(second.stdout.strip())}"] and key not in path.read_text()
    again = keys_new("--id", "ci")
    assert again.returncode == 2 and "already there" in again.stderr and again.stdout == ""
    assert path.read_text().splitlines() == lines


def _append_one(path: str, index: int) -> None:
    append_key(Path(path), StoredKey(f"worker-{index}", digest(new_key())))


def test_concurrent_appends_to_the_key_file_all_land(tmp_path: Path) -> None:
    """`keys new` reads, adds and renames: without the lock two at the same moment kept only one new entry."""
    import multiprocessing

    from pneumoscan.serving.keys import read_key_file

    path = tmp_path / "keys"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_one, args=(str(path), index)) for index in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert all(worker.exitcode == 0 for worker in workers)
    assert sorted(entry.key_id for entry in read_key_file(path)) == [f"worker-{i}" for i in range(8)]
