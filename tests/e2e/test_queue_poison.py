"""Every message ends: poison messages, a Redis outage and refused dead letters, end to end.

Real RabbitMQ, Redis and TorchServe (the fixtures of ``test_queue_bridge.py``). Each class of
poison message must end in a stored result (when its id is readable) and one dead letter,
within its bounded attempts, without a requeue; while Redis is down the bridge waits without
spinning and loses nothing; a dead-letter publish that RabbitMQ refuses or cannot route
never leaves a delivery unsettled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pika
import psutil
import pytest
import redis

from servekit.queue.bridge import EXIT_FORCED, BridgeConfig, dead_letter_queue
from servekit.queue.brokers import RabbitMQ, Redis, find_program
from servekit.queue.messages import MalformedMessage, StoredResult, attempts_key, result_key
from servekit.queue.retry import RetryPolicy
from servekit.serve.server import TorchServe, running
from tests.e2e import test_queue_bridge as base
from tests.e2e.conftest import ROOT, describe, wait_ready
from tests.e2e.test_queue_bridge import (
    GOOD_IRIS,
    WAIT,
    bridge_process,
    bridge_thread,
    client_for,
    config,
    drain,
    publish_raw,
    queue_depth,
    result_keys,
    stopped_after,
    wait_until,
)

pytestmark = pytest.mark.e2e

# The brokers, TorchServe and per-test names of the bridge's main tests (own instances here).
broker_pair, torchserve, names, store = base.broker_pair, base.torchserve, base.names, base.store

FAST = RetryPolicy(first_delay=0.01, max_delay=0.05, max_attempts=4)


def test_an_unreachable_torchserve_ends_after_its_attempts(
    broker_pair: tuple[RabbitMQ, Redis], names: tuple[str, str]
) -> None:
    """503 for ever (no server): bounded by max_attempts, then a stored 503 and a dead letter."""
    cfg = BridgeConfig(
        broker_pair[0].url, broker_pair[1].url, "http://127.0.0.1:9", names[0], names[1], retry=FAST
    )
    with bridge_thread(cfg, "bridge-503") as bridge, client_for(broker_pair, names) as client:
        rid = client.submit("iris", {"features": GOOD_IRIS[0]})
        answer = client.result(rid, WAIT)
        wait_until(lambda: bridge.stats["dead"] == 1, "dead-lettered")
    assert answer.status == 503 and answer.attempts == FAST.max_attempts
    assert f"gave up after {FAST.max_attempts} attempts" in (answer.error or "")
    assert json.loads(answer.body)["type"] == "RetriesExhausted"
    (properties, _), *rest = drain(broker_pair[0].url, dead_letter_queue(names[0]))
    assert not rest and properties.headers["x-status"] == 503
    assert bridge.stats["retries"] == FAST.max_attempts - 1 and bridge.stats["requeued"] == 0


# --- a body that kills its worker -------------------------------------------------------------

KILLER = '''"""Dies on a body starting with b"kill" (its whole batch with it); sleeps on b"slow"."""
import os
import time


def handle(data, context):
    if not data:
        return None
    answers = []
    for row in data:
        body = row.get("body") or row.get("data") or b""
        if bytes(body).startswith(b"kill"):
            os._exit(3)
        if bytes(body).startswith(b"slow"):
            time.sleep(2.5)
        answers.append({"ok": True})
    return answers
'''


KILLER_CONFIG = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 300\n"


def killer_mar(directory: Path) -> None:
    manifest = {
        "createdOn": "01/01/1980 00:00:00",
        "runtime": "python",
        "model": {
            "modelName": "killer",
            "handler": "killer.py",
            "modelVersion": "1.0",
            "configFile": "model-config.yaml",
        },
        "archiverVersion": "0.12.0",
    }
    with zipfile.ZipFile(directory / "killer.mar", "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        mar.writestr("killer.py", KILLER)
        # Batches of up to 8: one killer in a batch kills every request in it.
        mar.writestr("model-config.yaml", KILLER_CONFIG)


@pytest.fixture(scope="module")
def killer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    archives = tmp_path_factory.mktemp("killer-store")
    killer_mar(archives)
    workdir = tmp_path_factory.mktemp("torchserve-killer")
    with running(
        ROOT / "config.properties", workdir, model_store=archives, models=["killer"]
    ) as ts:
        wait_ready(ts, ["killer"])
        yield ts


def worker_pids(ts: TorchServe) -> list[int]:
    return [w["pid"] for w in describe(ts, "killer")["workers"]]


def test_a_body_that_kills_the_worker_ends_after_max_worker_deaths(
    broker_pair: tuple[RabbitMQ, Redis],
    killer_server: TorchServe,
    names: tuple[str, str],
    store: redis.Redis,
) -> None:
    """It used to be retried 30 times per delivery, killing the worker each time, for ever.

    Its first death is charged to no one (it could be another request of the batch): the
    message is quarantined and sent alone, and the deaths it causes then count: 1 + 3 calls.
    The count lives in Redis, so it holds across redeliveries: a second message whose
    earlier deliveries already cost two deaths in quarantine gets one more try, not three.
    """
    policy = RetryPolicy(first_delay=0.05, max_delay=0.5, max_attempts=100, max_worker_deaths=3)
    cfg = config(broker_pair, killer_server, names, prefetch=1, retry=policy)
    store.hset(
        attempts_key(names[1], "kill-2"), mapping={"calls": 3, "deaths": 2, "quarantined": 1}
    )
    with bridge_thread(cfg, "bridge-k") as bridge, client_for(broker_pair, names) as client:
        first = client.submit("killer", b"kill me", "application/octet-stream")
        second = client.submit("killer", b"kill me too", request_id="kill-2")
        good = client.submit("killer", b"fine", "application/octet-stream")
        answers = {rid: client.result(rid, WAIT) for rid in (first, second, good)}
        wait_until(lambda: bridge.stats["dead"] == 2, "both killers dead-lettered")
        stats = dict(bridge.stats)
    killed, again = answers[first], answers[second]
    assert killed.status >= 500 and killed.attempts == 4, killed
    assert "3 of them ending in a worker death while sent alone" in (killed.error or "")
    assert again.status >= 500 and again.attempts == 4  # 3 earlier + 1 now
    assert answers[good].status == 200 and answers[good].json() == {"ok": True}
    assert stats["exhausted"] == 2 and stats.get("requeued", 0) == 0, stats
    dead = drain(broker_pair[0].url, dead_letter_queue(names[0]))
    assert sorted(p.message_id for p, _ in dead) == sorted([first, second])
    assert store.exists(attempts_key(names[1], first)) == 0  # cleared with the stored result
    wait_ready(killer_server, ["killer"])


def test_a_killer_in_a_shared_batch_costs_the_other_messages_nothing(
    broker_pair: tuple[RabbitMQ, Redis],
    killer_server: TorchServe,
    names: tuple[str, str],
) -> None:
    """TorchServe answers every request of a dying batch "Worker died.": 4 killers and 4
    innocent messages in batches of 8 all ended 500 RetriesExhausted. Now a death quarantines
    the message; sent alone, the innocent ones get their 200 and the killers end."""
    policy = RetryPolicy(first_delay=0.05, max_delay=0.5, max_attempts=100, max_worker_deaths=2)
    cfg = config(broker_pair, killer_server, names, prefetch=8, retry=policy)
    with client_for(broker_pair, names) as client:
        killers, innocent = [], []
        for _ in range(4):  # published before the bridge starts: they share batches
            killers.append(client.submit("killer", b"kill", "application/octet-stream"))
            innocent.append(client.submit("killer", b"fine", "application/octet-stream"))
        with bridge_thread(cfg, "bridge-batch") as bridge:
            answers = {rid: client.result(rid, WAIT) for rid in killers + innocent}
            wait_until(lambda: bridge.stats["dead"] >= len(killers), "killers dead-lettered")
            stats = dict(bridge.stats)
    assert [answers[rid].status for rid in innocent] == [200] * 4, stats
    for rid in killers:
        assert answers[rid].status >= 500 and json.loads(answers[rid].body)["type"] == (
            "RetriesExhausted"
        )
        assert "2 of them ending in a worker death while sent alone" in (answers[rid].error or "")
    assert stats["quarantined_calls"] >= 4 * 2, stats
    dead = drain(broker_pair[0].url, dead_letter_queue(names[0]))
    assert sorted(p.message_id for p, _ in dead) == sorted(killers)
    wait_ready(killer_server, ["killer"])


def test_a_request_slower_than_the_http_timeout_ends_after_max_timeouts(
    broker_pair: tuple[RabbitMQ, Redis],
    killer_server: TorchServe,
    names: tuple[str, str],
) -> None:
    """It used to be resent up to 30 times (every copy kept running in TorchServe) and held
    its prefetch slot for about 31 minutes at the defaults."""
    policy = RetryPolicy(first_delay=0.05, max_delay=0.2, max_attempts=30, max_timeouts=2)
    cfg = config(broker_pair, killer_server, names, prefetch=2, retry=policy, http_timeout=1.0)
    with bridge_thread(cfg, "bridge-slow") as bridge, client_for(broker_pair, names) as client:
        slow = client.submit("killer", b"slow", "application/octet-stream")
        answer = client.result(slow, WAIT)
        wait_until(lambda: bridge.stats["dead"] == 1, "dead-lettered")
    assert answer.status == 504 and answer.attempts == 2, answer
    assert "2 in a timeout" in (answer.error or "")
    (properties, _), *rest = drain(broker_pair[0].url, dead_letter_queue(names[0]))
    assert not rest and properties.headers["x-status"] == 504
    wait_ready(killer_server, ["killer"])


# --- Redis down in the middle of a burst ------------------------------------------------------


def cpu_cores(pid: int, seconds: float) -> float:
    """The process's CPU time over ``seconds`` of wall time, in cores."""
    process = psutil.Process(pid)
    before, started = process.cpu_times(), time.monotonic()
    time.sleep(seconds)  # a measurement window, not a wait for a condition
    after = process.cpu_times()
    used: float = (after.user - before.user) + (after.system - before.system)
    return used / (time.monotonic() - started)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Redis]:
    """A Redis of this test's own, to stop and restart; it keeps its data across the restart."""
    server = Redis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_down_mid_burst_loses_nothing_and_does_not_spin(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    own_redis: Redis,
    tmp_path: Path,
) -> None:
    """The bridge used to requeue at once while Redis was down: 1.02 cores for nothing.

    Redis is restarted as the toolkit ships it (no configuration change here): it used to
    keep nothing on disk, and a restart lost 64 of 300 acknowledged results.
    """
    total, down_seconds = 300, 6.0
    amqp = broker_pair[0].url
    results = redis.Redis.from_url(own_redis.url)
    log = tmp_path / "bridge.log"
    with contextlib.closing(results), client_for((broker_pair[0], own_redis), names) as client:
        ids = [client.submit("iris", {"features": GOOD_IRIS[i % 3]}) for i in range(total)]
        pair = (broker_pair[0], own_redis)
        with stopped_after(bridge_process(pair, torchserve, names, "outage", log)) as bridge:
            wait_until(lambda: len(result_keys(results, names[1])) >= 40, "bridge working")
            own_redis.stop()
            down_at = time.monotonic()
            cores = cpu_cores(bridge.pid, down_seconds - 1.0)
            pending = queue_depth(amqp, names[0])
            time.sleep(max(0.0, down_seconds - (time.monotonic() - down_at)))  # outage length
            own_redis.start()
            answers = [client.result(rid, WAIT) for rid in ids]
            assert bridge.poll() is None, log.read_text()[-2000:]
    print(f"\nbridge CPU while Redis was down: {cores:.3f} cores; {pending} messages waiting")
    assert cores < 0.5, f"the bridge spins while Redis is down: {cores:.2f} cores"
    assert pending > 0, "the burst was over before Redis went down; make it bigger"
    assert [a.status for a in answers] == [200] * total
    assert len(result_keys(redis.Redis.from_url(own_redis.url), names[1])) == total
    assert queue_depth(amqp, names[0]) == 0
    assert drain(amqp, dead_letter_queue(names[0])) == []


# --- a dead letter RabbitMQ refuses -----------------------------------------------------------


def break_dead_letter_queue(url: str, queue: str, how: str) -> None:
    """Delete the dead-letter queue (unroutable), or make it refuse every message (nack)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_delete(dead_letter_queue(queue))
        if how == "refusing":
            arguments = {"x-max-length": 0, "x-overflow": "reject-publish"}
            channel.queue_declare(dead_letter_queue(queue), durable=True, arguments=arguments)
    finally:
        connection.close()


@pytest.mark.parametrize("how", ["unroutable", "refusing"])
def test_a_refused_dead_letter_never_stalls_the_bridge(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    how: str,
) -> None:
    """It used to leave the delivery unsettled: with prefetch 1, one such message stalled
    the bridge for good. Now the publish is tried ``dead_letter_attempts`` times with
    backoff, then the message is rejected; its stored result stays and the next is served."""
    amqp = broker_pair[0].url
    cfg = config(broker_pair, torchserve, names, prefetch=1, dead_letter_attempts=3)
    with bridge_thread(cfg, f"bridge-{how}") as bridge, client_for(broker_pair, names) as client:
        break_dead_letter_queue(amqp, names[0], how)
        bad = client.submit("iris", {"features": [1, 2, "three", 4]})
        good = client.submit("iris", {"features": GOOD_IRIS[1]})
        bad_answer, good_answer = client.result(bad, WAIT), client.result(good, WAIT)
        wait_until(lambda: bridge.stats["rejected"] == 1, "the refused message rejected")
        stats = dict(bridge.stats)
    assert bad_answer.status == 400 and good_answer.status == 200
    assert stats["dead_letter_refused"] == 3 and stats.get("dead", 0) == 0, stats
    assert queue_depth(amqp, names[0]) == 0  # rejected, not requeued for ever
    if how == "refusing":
        assert queue_depth(amqp, dead_letter_queue(names[0])) == 0


@pytest.mark.parametrize(
    ("model", "content_type", "words"),
    [("iris", "application/json\r\nX-A: 1", "'content_type' is"), ("../iris", None, "'model'")],
)
def test_the_client_refuses_what_the_bridge_would_refuse(
    broker_pair: tuple[RabbitMQ, Redis],
    names: tuple[str, str],
    model: str,
    content_type: str | None,
    words: str,
) -> None:
    with client_for(broker_pair, names) as client, pytest.raises(MalformedMessage, match=words):
        client.submit(model, {"features": GOOD_IRIS[0]}, content_type)
    assert queue_depth(broker_pair[0].url, names[0]) == 0


# --- request ids: the first answer wins -------------------------------------------------------


def test_an_answered_id_is_never_served_again_nor_overwritten(
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    store: redis.Redis,
) -> None:
    """A raw message with the message_id of an answered request overwrote its result, and
    two fresh messages with one id both reached TorchServe, the second answer winning."""
    amqp = broker_pair[0].url
    cfg = config(broker_pair, torchserve, names, prefetch=1)
    with bridge_thread(cfg, "bridge-ids") as bridge, client_for(broker_pair, names) as client:
        rid = client.submit("iris", {"features": GOOD_IRIS[0]})
        first = client.result(rid, WAIT)
        publish_raw(amqp, names[0], b"garbage", message_id=rid)  # malformed, with the same id
        client.submit("iris", {"features": GOOD_IRIS[1]}, request_id=rid)  # fresh, same id
        wait_until(lambda: bridge.stats["duplicate"] == 1, "the repeated id acknowledged")
        wait_until(lambda: bridge.stats["malformed"] == 1, "the garbage dead-lettered")
        stats = dict(bridge.stats)
        after = client.result(rid, WAIT)
    assert first.status == 200 and first.json()["label"] == "setosa"
    assert after == first, after  # neither the garbage's 400 nor the second request's answer
    assert stats["done"] == 1 and queue_depth(amqp, names[0]) == 0, stats
    assert StoredResult.decode(store.get(result_key(names[1], rid)) or b"") == first


# --- RabbitMQ blocks the bridge, or goes away -------------------------------------------------


def rabbitmqctl(rabbit: RabbitMQ, *args: str) -> str:
    program = find_program("rabbitmqctl", Path("/usr/lib/rabbitmq/bin/rabbitmqctl"))
    env = {**os.environ, **rabbit._env()}
    command = [program, "-n", env["RABBITMQ_NODENAME"], *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def unacknowledged(rabbit: RabbitMQ, queue: str) -> int:
    """Messages of ``queue`` delivered and not settled (rabbitmqctl answers under an alarm)."""
    for line in rabbitmqctl(
        rabbit, "list_queues", "-q", "name", "messages_unacknowledged"
    ).splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def settled(rabbit: RabbitMQ, queue: str) -> bool:
    return queue_depth(rabbit.url, queue) == 0 and unacknowledged(rabbit, queue) == 0


@pytest.fixture
def own_rabbit(tmp_path: Path) -> Iterator[RabbitMQ]:
    """A RabbitMQ of this test's own, to put under an alarm or stop."""
    server = RabbitMQ(tmp_path / "rabbitmq")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def exited(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(timeout)
    return None


def test_a_memory_or_disk_alarm_never_hangs_the_bridge(
    own_rabbit: RabbitMQ,
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    tmp_path: Path,
) -> None:
    """Under an alarm RabbitMQ stops reading from publishing connections: one dead letter
    blocked the bridge for ever, and SIGTERM no longer stopped it. Now SIGTERM ends it within
    --stop-timeout, and a connection blocked past --blocked-timeout ends it with code 3;
    the message is redelivered and, once the alarm is over, ends as it should."""
    pair, log = (own_rabbit, broker_pair[1]), tmp_path / "bridge.log"
    with client_for(pair, names) as client:
        warm = client.submit("iris", {"features": GOOD_IRIS[0]})
        with stopped_after(bridge_process(pair, torchserve, names, "warm", log, "--prefetch", "2")):
            assert client.result(warm, WAIT).status == 200
    publish_raw(own_rabbit.url, names[0], b"garbage", message_id="poison-1")  # to dead-letter
    rabbitmqctl(own_rabbit, "set_disk_free_limit", "100000GB")  # an alarm, at once
    options = ("--prefetch", "2", "--stop-timeout", "3", "--blocked-timeout", "600")
    with stopped_after(bridge_process(pair, torchserve, names, "term", log, *options)) as bridge:
        wait_until(lambda: unacknowledged(own_rabbit, names[0]) == 1, "the bridge took it")
        os.killpg(bridge.pid, signal.SIGTERM)
        code = exited(bridge, 30)
    assert code == EXIT_FORCED, (code, log.read_text()[-2000:])
    blocking = ("--prefetch", "2", "--blocked-timeout", "3")
    with stopped_after(bridge_process(pair, torchserve, names, "block", log, *blocking)) as bridge:
        code = exited(bridge, 60)
    assert code == 3, (code, log.read_text()[-2000:])
    rabbitmqctl(own_rabbit, "set_disk_free_limit", "50MB")
    with stopped_after(bridge_process(pair, torchserve, names, "after", log, "--prefetch", "2")):
        wait_until(lambda: settled(own_rabbit, names[0]), "the message ended")
    # One dead letter, or two when RabbitMQ had read the blocked publish before its connection
    # closed: the bridge cannot tell, and a second dead letter is the safe side.
    assert 1 <= queue_depth(own_rabbit.url, dead_letter_queue(names[0])) <= 2


def test_when_rabbitmq_goes_away_the_bridge_exits_at_once_and_loses_nothing(
    own_rabbit: RabbitMQ,
    broker_pair: tuple[RabbitMQ, Redis],
    torchserve: TorchServe,
    names: tuple[str, str],
    store: redis.Redis,
    tmp_path: Path,
) -> None:
    """Exit code 3 (a supervisor restarts it), but workers in backoff kept the process alive
    for minutes; now the connection's loss stops them. The messages wait in RabbitMQ."""
    pair, log, total = (own_rabbit, broker_pair[1]), tmp_path / "bridge.log", 4
    with client_for(pair, names) as client:
        for _ in range(total):
            client.submit("iris", {"features": GOOD_IRIS[0]})
    # TorchServe unreachable (nothing listens on port 9): every message in retry and backoff.
    options = ("--inference-url", "http://127.0.0.1:9", "--max-attempts", "1000")
    with stopped_after(bridge_process(pair, torchserve, names, "gone", log, *options)) as bridge:
        wait_until(
            lambda: len(store.keys(f"{names[1]}:attempts:*")) == total, "every message retrying"
        )
        own_rabbit.stop()
        stopped_at = time.monotonic()
        code = exited(bridge, 60)
        took = time.monotonic() - stopped_at
    assert code == 3, (code, log.read_text()[-2000:])
    assert took < 10, f"the bridge took {took:.1f} s to exit"
    own_rabbit.start()
    assert queue_depth(own_rabbit.url, names[0]) == total  # persistent: redelivered later
