"""The queue bridge end to end: real RabbitMQ, Redis, TorchServe; bridges in threads or processes.

One RabbitMQ + Redis pair and one TorchServe serve the module; every test uses its own queue and
Redis key prefix, so tests never see each other's messages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import redis
import requests

from servekit.datasets import digit_png, digits_split
from servekit.queue.bridge import Bridge, BridgeConfig, dead_letter_queue, declare_queues
from servekit.queue.brokers import RabbitMQ, Redis, brokers
from servekit.queue.client import QueueClient, ResultTimeout
from servekit.queue.messages import StoredResult, result_key
from servekit.queue.retry import RetryPolicy
from servekit.serve.server import TorchServe, running
from tests.e2e.conftest import ROOT, describe, wait_ready

pytestmark = pytest.mark.e2e

GOOD_IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
BAD_IRIS = [{"features": [1, 2, "three", 4]}, {"features": [1, 2]}, {"petals": 3}]
WAIT = 120.0  # generous upper bounds for waits: they fail a hung test, they do not time anything


@pytest.fixture(scope="module")
def broker_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitMQ, Redis]]:
    with brokers(tmp_path_factory.mktemp("brokers")) as pair:
        yield pair


@pytest.fixture(scope="module")
def torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    workdir = tmp_path_factory.mktemp("torchserve-bridge")
    models = ["iris", "digits", "empty_model"]
    with running(ROOT / "config.properties", workdir, model_store=model_store, models=models) as ts:
        wait_ready(ts, models)
        yield ts


@pytest.fixture
def names() -> tuple[str, str]:
    """A queue and a Redis prefix of this test's own."""
    tag = uuid.uuid4().hex[:8]
    return f"requests-{tag}", f"t{tag}"


@pytest.fixture
def store(broker_pair: tuple[RabbitMQ, Redis]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_pair[1].url)
    yield client
    client.close()


def config(
    pair: tuple[RabbitMQ, Redis], ts: TorchServe, names: tuple[str, str], **kwargs: Any
) -> BridgeConfig:
    return BridgeConfig(pair[0].url, pair[1].url, ts.inference_url, names[0], names[1], **kwargs)


@contextlib.contextmanager
def bridge_thread(cfg: BridgeConfig, name: str) -> Iterator[Bridge]:
    """A bridge consuming in a thread; stopped and joined on exit, also on failure."""
    bridge = Bridge(cfg, name)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            bridge.run()
        except BaseException as error:  # surfaced by the test below
            errors.append(error)
            bridge.ready.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    bridge.ready.wait(WAIT)
    try:
        assert not errors, errors
        yield bridge
    finally:
        bridge.stop()
        thread.join(WAIT)
    assert not thread.is_alive(), f"{name} did not stop"
    assert not errors, errors


@contextlib.contextmanager
def client_for(pair: tuple[RabbitMQ, Redis], names: tuple[str, str]) -> Iterator[QueueClient]:
    with QueueClient(pair[0].url, pair[1].url, names[0], names[1]) as client:
        yield client


def direct(ts: TorchServe, model: str, body: bytes, content_type: str) -> tuple[int, Any]:
    response = requests.post(
        f"{ts.inference_url}/predictions/{model}",
        data=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    return response.status_code, response.json()


def drain(url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Every message now in ``queue`` (properties, body), taken off it."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        messages: list[tuple[Any, bytes]] = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((properties, body))
    finally:
        connection.close()


def queue_depth(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def result_keys(store: redis.Redis, prefix: str) -> list[bytes]:
    return list(store.scan_iter(match=f"{prefix}:result:*", count=1000))


def handled(bridge: Bridge) -> int:
    """Messages whose result (answer or error) the bridge has stored."""
    return bridge.stats["done"] + bridge.stats["failed"] + bridge.stats["malformed"]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def publish_raw(url: str, queue: str, body: bytes, message_id: str | None = None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        declare_queues(channel, queue)
        channel.basic_publish("", queue, body, pika.BasicProperties(message_id=message_id))
    finally:
        connection.close()


def without_ids(body: Any) -> Any:
    """A handler's error body without its request ids (they differ from call to call)."""
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k not in ("request_id", "client_request_id")}
    return body


def mixed_requests() -> list[tuple[str, bytes, str]]:
    """(model, body, content type): good and bad iris, a digit image, bad bytes, unknown model."""
    split = digits_split()
    requests_: list[tuple[str, bytes, str]] = []
    for i in range(10):
        requests_.append(
            ("iris", json.dumps({"features": GOOD_IRIS[i % 3]}).encode(), "application/json")
        )
        requests_.append(("iris", json.dumps(BAD_IRIS[i % 3]).encode(), "application/json"))
        if i % 2 == 0:
            requests_.append(("digits", digit_png(split.x_test[i]), "image/png"))
            requests_.append(("digits", b"\x89PNG\r\n\x1a\n not really", "image/png"))
            requests_.append(("no_such_model", b"{}", "application/json"))
            requests_.append(("empty_model", bytes(range(256)), "application/octet-stream"))
    return requests_


def test_mixed_burst_gets_every_answer_exactly_once(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    store: redis.Redis,
) -> None:
    burst = mixed_requests()
    expected = {(m, b, c): direct(torchserve, m, b, c) for m, b, c in set(burst)}
    cfg = config(broker_pair, torchserve, names, prefetch=4)
    with (
        bridge_thread(cfg, "bridge-a") as a,
        bridge_thread(cfg, "bridge-b") as b,
        client_for(broker_pair, names) as client,
    ):
        ids = {client.submit(m, body, c): (m, body, c) for m, body, c in burst}
        # the same request submitted twice (a producer retrying) is answered once, one key
        twice = client.submit("iris", {"features": GOOD_IRIS[0]}, request_id="resubmitted-1")
        client.submit("iris", {"features": GOOD_IRIS[0]}, request_id=twice)
        answers = {rid: client.result(rid, WAIT) for rid in ids}
        duplicates = lambda: a.stats["duplicate"] + b.stats["duplicate"]  # noqa: E731
        wait_until(lambda: handled(a) + handled(b) + duplicates() == len(ids) + 2, "all ended")
        assert handled(a) + handled(b) == len(ids) + 1 and duplicates() == 1

    for rid, answer in answers.items():
        status, body = expected[ids[rid]]
        assert (answer.status, without_ids(answer.json())) == (status, without_ids(body))
        if isinstance(body, dict) and "request_id" in body:  # a handler's error: both ids
            assert answer.json()["client_request_id"] == rid, ids[rid][:1]
        assert answer.model == ids[rid][0] and answer.id == rid
        assert (answer.error is None) == answer.ok
    assert sorted(result_keys(store, names[1])) == sorted(
        result_key(names[1], rid).encode() for rid in [*ids, twice]
    )
    assert store.llen(f"{names[1]}:done:{twice}") == 1
    assert {r.bridge for r in answers.values()} == {"bridge-a", "bridge-b"}

    failed = {rid for rid, answer in answers.items() if not answer.ok}
    dead = drain(broker_pair[0].url, dead_letter_queue(names[0]))
    assert sorted(p.message_id for p, _ in dead) == sorted(failed)  # each once, none good
    assert {p.headers["x-status"] for p, _ in dead} == {400, 404, 415}, [p.headers for p, _ in dead]
    assert all(p.headers["x-error"] for p, _ in dead)
    assert queue_depth(broker_pair[0].url, names[0]) == 0
    assert {s for s, _ in expected.values()} == {200, 400, 404, 415}


def test_the_bridges_request_id_reaches_the_model_log_of_a_failing_message(
    broker_pair: tuple[RabbitMQ, Redis], torchserve: TorchServe, names: tuple[str, str]
) -> None:
    """One id from RabbitMQ to the worker's log: the bridge sends it as ``X-Request-ID``."""
    with (
        bridge_thread(config(broker_pair, torchserve, names), "bridge-ids"),
        client_for(broker_pair, names) as client,
    ):
        rid = client.submit("iris", BAD_IRIS[0])
        answer = client.result(rid, WAIT)
    assert answer.status == 400
    body = answer.json()
    assert body["client_request_id"] == rid
    wanted = f"request_id={body['request_id']} client_request_id={rid} answered 400"
    log = torchserve.log_dir / "model_log.log"
    wait_until(lambda: wanted in log.read_text(errors="replace"), "the failure's log line")


def envelope(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


MALFORMED = [
    # (AMQP message_id, body, the request id the result is stored under, words in the error)
    ("m-notjson", b"\xff{not json", "m-notjson", "not JSON"),
    (None, b"[1, 2, 3]", None, "JSON list; expected an object"),
    (None, envelope(model="iris", body=""), None, "missing field 'id'"),
    (None, envelope(id="m-nomodel", body=""), "m-nomodel", "missing field 'model'"),
    (None, envelope(id="m-nobody", model="iris"), "m-nobody", "missing field 'body'"),
    (None, envelope(id="m-b64", model="iris", body="%%%"), "m-b64", "not valid base64"),
    (None, envelope(id="m-typo", model="iris", body="", ttle=5), "m-typo", "unknown field(s)"),
    (None, envelope(id="bad id!", model="iris", body=""), None, "'id' is 'bad id!'"),
    (None, envelope(id="m-ttl", model="iris", body="", ttl=-1), "m-ttl", "'ttl' is -1"),
    (
        None,
        envelope(
            id="m-unknown",
            model="nope",
            body=base64.b64encode(b"{}").decode(),
            content_type="application/json",
        ),
        "m-unknown",
        "nope",
    ),
    # Poison that once looped for ever (issue 11): undecodable in other ways than the two
    # errors caught, or refused by the HTTP client as a header (read as a 503 and retried).
    ("p-deep", b"[" * 100_000, "p-deep", "expected one flat request envelope"),
    ("p-deep-obj", b'{"a":' * 50_000, "p-deep-obj", "expected one flat request envelope"),
    ("p-deep-short", b"[" * 1000, "p-deep-short", "not JSON this bridge reads"),
    (None, b'{"id": "p-int", "ttl": ' + b"9" * 5000 + b"}", None, "integers under 4300"),
    (None, envelope(id="p-ttl", model="iris", body="", ttl=10**4000), "p-ttl", "about 4000"),
    (None, envelope(id="p-inf", model="iris", body="", ttl=1e308 * 10), "p-inf", "'ttl' is inf"),
    ("p-utf8", b'{"id": "x", "body": "\xc3\x28"}', "p-utf8", "not UTF-8 text"),
    (
        None,
        envelope(id="p-crlf", model="iris", body="", content_type="a/b\r\nX: 1"),
        "p-crlf",
        "MIME",
    ),
    (
        None,
        envelope(id="p-euro", model="iris", body="", content_type="text/x; a=€"),
        "p-euro",
        "MIME",
    ),
    (
        "p-big",
        envelope(id="p-big", model="iris", body="QUFB" * 100_000),
        "p-big",
        "limit is 300000",
    ),
    ("bad id\twith tab", b"not json", None, "not JSON"),  # an invalid message_id is no Redis key
    (None, envelope(id="p-sur", model="\ud800", body=""), "p-sur", "'model' is '\\ud800'"),
]


def test_malformed_messages_go_to_the_dead_letter_queue_with_a_clear_error(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    store: redis.Redis,
) -> None:
    amqp = broker_pair[0].url
    for message_id, body, _, _ in MALFORMED:
        publish_raw(amqp, names[0], body, message_id)
    cfg = config(broker_pair, torchserve, names, max_message_bytes=300_000)
    with (
        bridge_thread(cfg, "bridge-m") as bridge,
        client_for(broker_pair, names) as client,
    ):
        wait_until(lambda: bridge.stats["dead"] == len(MALFORMED), "every message dead-lettered")
        answers = {rid: client.result(rid, WAIT) for _, _, rid, _ in MALFORMED if rid}

    dead = dict((body, properties) for properties, body in drain(amqp, dead_letter_queue(names[0])))
    assert sorted(dead) == sorted(body for _, body, _, _ in MALFORMED)  # each once, untouched
    for _, body, rid, words in MALFORMED:
        headers = dead[body].headers
        assert words in headers["x-error"], headers
        assert headers["x-request-id"] == (rid or "") and len(headers["x-error"]) <= 1000
        if rid:
            assert answers[rid].status in (400, 404) and words in (answers[rid].error or "")
            assert answers[rid].json()["message"] == answers[rid].error
    assert bridge.stats["retries"] == 0 and bridge.stats["requeued"] == 0
    assert queue_depth(amqp, names[0]) == 0
    assert sorted(result_keys(store, names[1])) == sorted(
        result_key(names[1], rid).encode() for rid in answers
    )


@pytest.fixture
def small_queue_server(model_store: Path, tmp_path: Path) -> Iterator[TorchServe]:
    """iris alone behind a job queue of 2: more than ~6 requests at once get 503."""
    with running(
        ROOT / "config.properties",
        tmp_path / "ts",
        model_store=model_store,
        models=["iris"],
        extra={"job_queue_size": "2"},
    ) as ts:
        wait_ready(ts, ["iris"])
        yield ts


def test_burst_beyond_job_queue_size_completes_thanks_to_retry(
    broker_pair: tuple[RabbitMQ, Redis],
    small_queue_server: TorchServe,
    names: tuple[str, str],
) -> None:
    ts = small_queue_server
    cfg = config(
        broker_pair,
        ts,
        names,
        prefetch=32,
        retry=RetryPolicy(first_delay=0.01, max_delay=0.2, max_attempts=1000),
    )
    with bridge_thread(cfg, "bridge-q") as bridge, client_for(broker_pair, names) as client:
        ids = [client.submit("iris", {"features": GOOD_IRIS[i % 3]}) for i in range(300)]
        answers = [client.result(rid, WAIT) for rid in ids]
    assert [a.status for a in answers] == [200] * len(ids)
    assert bridge.stats["retries"] > 0, "the burst never filled TorchServe's queue"
    assert bridge.stats["done"] == len(ids) and bridge.stats["dead"] == 0
    assert max(a.attempts for a in answers) > 1
    assert drain(broker_pair[0].url, dead_letter_queue(names[0])) == []


def bridge_process(
    pair: tuple[RabbitMQ, Redis],
    ts: TorchServe,
    names: tuple[str, str],
    name: str,
    log: Path,
    *options: str,
) -> subprocess.Popen[bytes]:
    """``servekit bridge`` in its own session; ``options`` are added (the last wins)."""
    command = [
        sys.executable, "-m", "servekit.cli", "bridge",
        "--amqp-url", pair[0].url, "--redis-url", pair[1].url,
        "--inference-url", ts.inference_url, "--queue", names[0], "--prefix", names[1],
        "--prefetch", "8", "--name", name, *options,
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


@contextlib.contextmanager
def stopped_after(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_killing_a_bridge_mid_burst_loses_nothing(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    store: redis.Redis,
    tmp_path: Path,
) -> None:
    total = 600
    with client_for(broker_pair, names) as client:
        ids = [client.submit("iris", {"features": GOOD_IRIS[i % 3]}) for i in range(total)]
        log = tmp_path / "bridges.log"
        with stopped_after(bridge_process(broker_pair, torchserve, names, "first", log)) as first:
            wait_until(lambda: len(result_keys(store, names[1])) >= 50, "first bridge working")
            os.killpg(first.pid, signal.SIGKILL)  # no goodbye: its unacked messages are redelivered
            first.wait()
        answered_by_first = len(result_keys(store, names[1]))
        assert answered_by_first < total, "the kill came after the burst; make the burst bigger"
        with stopped_after(bridge_process(broker_pair, torchserve, names, "second", log)) as second:
            answers = [client.result(rid, WAIT) for rid in ids]
            assert second.poll() is None, log.read_text()[-2000:]
            os.killpg(second.pid, signal.SIGTERM)  # a clean stop: exit code 0
            assert second.wait(60) == 0, log.read_text()[-2000:]

    assert [a.status for a in answers] == [200] * total
    assert {a.bridge for a in answers} == {"first", "second"}
    assert len(result_keys(store, names[1])) == total
    assert queue_depth(broker_pair[0].url, names[0]) == 0
    assert drain(broker_pair[0].url, dead_letter_queue(names[0])) == []


def test_result_blocks_until_the_answer_arrives_for_every_waiter(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
) -> None:
    with client_for(broker_pair, names) as client:
        rid = client.submit("iris", {"features": GOOD_IRIS[1]})
        with pytest.raises(ResultTimeout, match="is a bridge consuming queue"):
            client.result(rid, timeout=0.2)  # no bridge yet
        got: list[StoredResult] = []

        def wait() -> None:
            with client_for(broker_pair, names) as own:
                got.append(own.result(rid, WAIT))

        waiters = [threading.Thread(target=wait) for _ in range(3)]
        for waiter in waiters:
            waiter.start()
        with bridge_thread(config(broker_pair, torchserve, names), "bridge-w"):
            for waiter in waiters:
                waiter.join(WAIT)
        assert [a.json()["label"] for a in got] == ["virginica"] * 3
        assert client.result(rid, timeout=0.01) == got[0]  # already there: no wait


def test_cli_submits_a_file_and_prints_the_answer(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    tmp_path: Path,
) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"features": GOOD_IRIS[0]}))
    bad.write_text(json.dumps(BAD_IRIS[0]))
    common = [
        "--amqp-url",
        broker_pair[0].url,
        "--redis-url",
        broker_pair[1].url,
        "--queue",
        names[0],
        "--timeout",
        "60",
    ]
    ask = [sys.executable, "-m", "servekit.cli", "ask"]
    cfg = BridgeConfig(broker_pair[0].url, broker_pair[1].url, torchserve.inference_url, names[0])
    with bridge_thread(cfg, "bridge-cli"):
        ok = subprocess.run(
            [*ask, "iris", str(good), *common],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        failed = subprocess.run(
            [*ask, "iris", str(bad), "--json", *common],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("200 ") and '"label": "setosa"' in ok.stdout
    assert failed.returncode == 1, failed.stderr
    record = json.loads(failed.stdout)
    assert record["status"] == 400 and "three" in record["error"]
    assert record["body"]["type"] == "BadRequest"


def test_a_worker_death_mid_burst_loses_nothing(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    store: redis.Redis,
) -> None:
    """An iris worker is killed with a batch in its hands: that batch gets 500 "Worker died."
    (retried), the rest waits for the restarted worker (or goes to the others, as many as
    iris's spec says); nothing is lost.

    The worker is stopped (SIGSTOP) first, so it holds the next batch TorchServe hands it: an
    iris batch takes under a millisecond, and with two workers a plain SIGKILL could land
    between batches (a clean-clone CI run saw no retry)."""
    cfg = config(
        broker_pair,
        torchserve,
        names,
        prefetch=8,
        retry=RetryPolicy(first_delay=0.05, max_delay=0.5, max_attempts=1000),
    )
    pid = describe(torchserve, "iris")["workers"][0]["pid"]
    with bridge_thread(cfg, "bridge-d") as bridge, client_for(broker_pair, names) as client:
        ids = [client.submit("iris", {"features": GOOD_IRIS[i % 3]}) for i in range(400)]
        wait_until(lambda: len(result_keys(store, names[1])) >= 40, "bridge working")
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)  # its frontend thread hands it a batch within milliseconds of traffic
        os.kill(pid, signal.SIGKILL)
        answers = [client.result(rid, WAIT) for rid in ids]
    assert [a.status for a in answers] == [200] * len(ids)
    assert bridge.stats["retries"] > 0, "no request was in flight when the worker died"
    assert len(result_keys(store, names[1])) == len(ids)
    assert drain(broker_pair[0].url, dead_letter_queue(names[0])) == []
    wait_ready(torchserve, ["iris"])  # the module's other tests get a READY worker back
    assert pid not in [w["pid"] for w in describe(torchserve, "iris")["workers"]]


def test_a_wait_longer_than_the_redis_socket_timeout_ends_in_result_timeout(
    broker_pair: tuple[RabbitMQ, Redis], names: tuple[str, str]
) -> None:
    """redis-py 8 reads with a 5 s socket timeout: result() must block in shorter slices."""
    with client_for(broker_pair, names) as client, pytest.raises(ResultTimeout):
        client.result("nobody-answers-this", timeout=6.0)
