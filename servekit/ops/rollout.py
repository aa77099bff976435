"""Switch a served model to a new archive, under load, without failing a request.

``servekit rollout MODEL ARCHIVE`` on a running TorchServe whose model API is on (loopback
only):

1. check the inputs before touching the server: the archive is a readable ``.mar`` naming a
   model version, the model is served, and that version is not registered yet;
2. copy the archive into the server's model store under a name of its own
   (``<model>-<version>-rollout-<random>.mar``; TorchServe registers an archive by its name
   in the model store, or by a ``file://`` URL that ``allowed_urls`` admits, which it copies
   there too) and register it as a new version of the model, with as many workers as the
   default version has; wait until they are READY and the handler says ``ready`` (warmed
   up); a worker that fails to load stops the rollout at once, with the reason its log gives;
3. send the version its smoke request (``/predictions/MODEL/VERSION``), which must answer 2xx;
4. make it the default version: requests sent from now on go to it;
5. drain the old version: each of its workers is sent ``SIGUSR2`` and customized describes
   until it holds one (servekit/runtime/recycle.py), so every request it had queued has been
   answered when it is unregistered.

Until step 4 any failure, ``SIGTERM`` or ``SIGINT`` rolls back: the new version is
unregistered and its copy removed; the old one stays the default and never stopped serving.
After step 4 a signal lets the drain finish first. The model's operation lock keeps a
``servekit recycle``/``scale``/``rollout`` of the same model out meanwhile (run it with the
server's ``TMPDIR``, as those).

    servekit rollout slow_model build/slow_model-2.0.mar
    servekit rollout iris iris-v2.mar --workers 2 --smoke-json '{"features": [5.1, 3.5, 1.4, 0.2]}'

Exit codes: 0 rolled out; 1 the rollout failed (rolled back) or the model is not served or
busy; 2 usage error or a bad archive (unreadable, no version, a version already registered);
3 the server is unreachable; 128 + the signal number when stopped by SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import requests

from servekit import project
from servekit.errors import ServerError, ToolkitError, Unreachable
from servekit.health.cli import UsageError, base_url, load_keys, model_name, seconds_arg
from servekit.health.initlog import LogMark, last_init_error, log_mark
from servekit.health.probe import DEFAULT_INFERENCE_URL, DEFAULT_MANAGEMENT_URL
from servekit.health.recycle import (
    POLL_SECONDS,
    RETRY_STATUSES,
    SCALE_ATTEMPTS,
    Busy,
    Interrupted,
    deferred_signals,
    interruptible,
    is_parked,
    model_lock,
)
from servekit.ops.frontend import find_frontend
from servekit.ops.scale import READY_STATUS, handler_status, ready_pids, undrainable
from servekit.runtime.decoding import brief
from servekit.runtime.recycle import PARK_SECONDS
from servekit.runtime.request_ids import MODEL_VERSION, VERSION_HEADER
from servekit.runtime.stats import stats_dir
from servekit.serve.examples import EXAMPLE_TYPES, project_samples, samples
from servekit.serve.management import (
    Management,
    ManagementError,
    ManagementUnreachable,
    model_path,
)
from servekit.serve.marinfo import read_mar

PROG = "servekit rollout"
COPY_MARK = "-rollout-"  # in the name of an archive this command copied into the model store
PARK_WINDOW = PARK_SECONDS / 2  # a worker signalled parks within this, or is signalled again
SENDER_JOIN_SECONDS = 1.0


class RolloutFailed(ServerError):
    """The new version did not load, warm up or answer its smoke request: rolled back."""


@dataclass(frozen=True)
class Smoke:
    body: bytes
    content_type: str | None


@dataclass
class _Attempt:
    copy: str | None = None  # the archive's copy in the model store, when it was copied
    registered: bool = False
    switched: bool = False


@dataclass
class Timings:
    steps: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - started, 3)

    def line(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.steps.items())


# --- the inputs, checked before the server is touched ----------------------------------------


def archive_version(path: Path, model: str) -> str:
    """The model version ``path``'s manifest names, for ``model``; ``UsageError`` saying what
    is wrong (another model's archive, a version a URL or a header would have to escape)."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory: give the .mar file to roll out")
    if not path.is_file():
        raise UsageError(f"{path}: no such file (give the .mar to roll out)")
    try:
        manifest = read_mar(path).manifest
    except ToolkitError as err:
        raise UsageError(f"{path} is not a model archive TorchServe can load: {err}") from None
    described = manifest.get("model", {})
    version = described.get("modelVersion")
    if not isinstance(version, str) or not version.strip():
        raise UsageError(
            f"{path}: MAR-INF/MANIFEST.json names no model version; build it with "
            "torch-model-archiver --version (or the spec's version:)"
        )
    if not MODEL_VERSION.fullmatch(version):
        raise UsageError(
            f"{path}: model version {version!r} is not 1-64 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit; build it with another --version"
        )
    name = described.get("modelName")
    if name != model:
        raise UsageError(
            f"{path} is an archive of model {name!r}, not {model!r}: roll out an archive "
            f"built for {model} (its spec's name:)"
        )
    return version


def smoke_request(args: argparse.Namespace) -> Smoke:
    """The smoke request: ``--smoke FILE``, ``--smoke-json TEXT``, else the model's sample."""
    if args.smoke is not None:
        try:
            body = args.smoke.read_bytes()
        except OSError as err:
            raise UsageError(f"cannot read smoke request {args.smoke}: {err.strerror}") from None
        kind = args.content_type or EXAMPLE_TYPES.get(args.smoke.suffix.lower())
        return Smoke(body, kind or "application/octet-stream")
    if args.smoke_json is not None:
        try:
            json.loads(args.smoke_json)
        except ValueError as err:
            raise UsageError(f"--smoke-json is not JSON: {err}") from None
        return Smoke(args.smoke_json.encode(), args.content_type or "application/json")
    root = project.from_args(args, check=False).root
    known = {**samples(None), **project_samples(root, [args.model])}
    if args.model not in known:
        raise UsageError(
            f"no sample request for {args.model} (none in {root / 'examples'}): "
            "give --smoke FILE or --smoke-json TEXT"
        )
    post = known[args.model].post
    if "json" in post:
        return Smoke(json.dumps(post["json"]).encode(), "application/json")
    headers = post.get("headers", {})
    return Smoke(bytes(post.get("data", b"")), headers.get("Content-Type"))


# --- the rollout -----------------------------------------------------------------------------


class Rollout:
    """Rolls ``model`` out to a new archive through the management API (see the module doc)."""

    def __init__(
        self,
        api: Management,
        model: str,
        inference_url: str,
        model_store: Path,
        log_dir: Path | None,
        timeout: float = 120.0,
        inference_token: str | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.api = api
        self.model = model
        self.inference_url = inference_url.rstrip("/")
        self.model_store = model_store
        self.log_dir = log_dir
        self.timeout = timeout
        self.inference_token = inference_token
        self.say = say
        self.kill: Callable[[int, int], None] = os.kill
        self.timings = Timings()

    def run(
        self, archive: Path, version: str, old: str, workers: int, smoke: Smoke, keep_old: bool
    ) -> None:
        """Register, warm up and smoke-test ``version``, switch to it, retire ``old``."""
        mark = log_mark(self.log_dir) if self.log_dir is not None else None
        with self._undone_unless_switched(version) as attempt:
            name = self._place(archive, version, attempt)
            with self.timings.step("register"):
                attempt.registered = True  # unless TorchServe refuses: a lost answer may be yes
                try:
                    self.api.register(
                        name,
                        model_name=self.model,
                        workers=workers,
                        synchronous=False,
                        timeout=self.timeout,
                    )
                except ManagementError as err:
                    attempt.registered = not 400 <= err.status < 500
                    raise
                self._configure(name, version, workers)
            with self.timings.step("ready"):
                self._wait_loaded(version, workers, mark)
            with self.timings.step("smoke"):
                status = self._smoke(version, smoke)
            self.say(f"{self.model} {version}: smoke request answered {status}")
            with deferred_signals():  # from the switch on, a signal waits until the drain ends
                with self.timings.step("switch"):
                    self.api.set_default(self.model, version)
                    attempt.switched = True
                self.say(f"{self.model}: default version {old} -> {version}")
                with self.timings.step("drain"):
                    self._retire(old, keep_old)

    @contextlib.contextmanager
    def _undone_unless_switched(self, version: str) -> Iterator[_Attempt]:
        """Whatever stops the rollout before the switch (an error, a signal) removes the new
        version and its copy; a refusal of the management API is a ``RolloutFailed``."""
        attempt = _Attempt()
        try:
            yield attempt
        except BaseException as err:
            if attempt.switched:
                raise
            with deferred_signals():
                self._roll_back(version, attempt.copy, attempt.registered)
            if isinstance(err, ManagementError):
                raise RolloutFailed(str(err)) from None
            raise

    # -- 1. register ------------------------------------------------------------------------

    def _place(self, archive: Path, version: str, attempt: _Attempt) -> str:
        """The archive's name in the model store (``attempt.copy`` when it was copied)."""
        with contextlib.suppress(OSError):
            if archive.resolve().parent == self.model_store.resolve():
                return archive.name
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in version)
        name = f"{self.model}-{safe}{COPY_MARK}{secrets.token_hex(4)}.mar"
        target = self.model_store / name
        try:
            with archive.open("rb") as source, target.open("xb") as copy:
                attempt.copy = name
                shutil.copyfileobj(source, copy)
        except OSError as err:
            raise UsageError(
                f"cannot copy {archive} into the model store {self.model_store}: "
                f"{err.strerror or err} (give --model-store DIR, the server's)"
            ) from None
        return name

    def _configure(self, name: str, version: str, workers: int) -> None:
        entry = self.api.entry(self.model, version)
        if (entry.get("minWorkers"), entry.get("maxWorkers")) != (workers, workers):
            # the archive's minWorkers/maxWorkers win over initial_workers
            self._scale(version, workers)
        plural = "s" if workers != 1 else ""
        self.say(f"{self.model}: registered {version} ({name}) with {workers} worker{plural}")

    def _scale(self, version: str, workers: int) -> None:
        """Scale ``version``, again while TorchServe refuses because it is busy."""
        for attempt in range(1, SCALE_ATTEMPTS + 1):
            try:
                self.api.scale(self.model, workers, workers, version, False, self.timeout)
                return
            except ManagementError as err:
                if err.status not in RETRY_STATUSES or attempt == SCALE_ATTEMPTS:
                    raise
            time.sleep(0.5 * attempt)

    # -- 2. loaded and warmed up ------------------------------------------------------------

    def _wait_loaded(self, version: str, workers: int, mark: LogMark | None) -> None:
        """Until ``workers`` workers are READY and each handler said ``ready``; the first
        load failure in the log ends the wait (``RolloutFailed`` with its reason)."""
        deadline = time.monotonic() + self.timeout
        warmed: set[int] = set()
        status: str | None = None
        while True:
            failure = self._init_error(version, mark)
            if failure is not None:
                raise RolloutFailed(f"{self.model} {version} failed to load: {failure}")
            entry = self.api.entry(self.model, version)
            ready = {int(w["pid"]) for w in Management.ready_workers(entry)}
            if len(ready) >= workers:
                status, pid = self._handler_status(version)
                if status in (READY_STATUS, None):
                    warmed.add(pid if pid is not None else min(ready))
                if ready <= warmed or (status is None and pid is None):
                    self.say(f"{self.model} {version}: {len(ready)} READY, handler ready")
                    return
            if time.monotonic() > deadline:
                raise RolloutFailed(
                    f"{self.model} {version} not ready within {self.timeout:g} s: "
                    f"{len(ready)} of {workers} workers READY, handler status {status or 'unknown'}"
                )
            time.sleep(POLL_SECONDS * 2)

    def _init_error(self, version: str, mark: LogMark | None) -> str | None:
        if self.log_dir is None:
            return None
        return last_init_error(self.log_dir, self.model, version, mark)

    def _handler_status(self, version: str) -> tuple[str | None, int | None]:
        return handler_status(self.api, self.model, version)

    # -- 3. smoke request -------------------------------------------------------------------

    def _smoke(self, version: str, smoke: Smoke) -> int:
        url = f"{self.inference_url}/predictions/{quote(self.model, safe='')}/" + quote(
            version, safe=""
        )
        headers = {"Content-Type": smoke.content_type} if smoke.content_type else {}
        if self.inference_token:
            headers["Authorization"] = f"Bearer {self.inference_token}"
        try:
            reply = requests.post(url, data=smoke.body, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise RolloutFailed(
                f"{self.model} {version}: the smoke request was not answered within "
                f"{self.timeout:g} s (--timeout)"
            ) from None
        except requests.RequestException as err:
            raise Unreachable(
                f"smoke request: no answer from {url} ({type(err).__name__}); "
                "is --inference-url the server's?"
            ) from None
        if not 200 <= reply.status_code < 300:
            raise RolloutFailed(
                f"{self.model} {version}: the smoke request answered "
                f"{reply.status_code}: {_message(reply)}"
            )
        answered_by = reply.headers.get(VERSION_HEADER)
        if answered_by not in (None, version):
            raise RolloutFailed(
                f"{self.model} {version}: the smoke request was answered by version "
                f"{answered_by} ({VERSION_HEADER})"
            )
        return reply.status_code

    # -- rolling back -----------------------------------------------------------------------

    def _roll_back(self, version: str, copy: str | None, registered: bool) -> None:
        done = []
        if registered:
            try:
                self.api.unregister(self.model, version, timeout=self.timeout)
                still = self._registered(version)  # a 404 may hide a version still there
                gone = f"{version} unregistered"
                done.append(f"could not unregister {version}" if still else gone)
            except ServerError as err:
                done.append(f"could not unregister {version}: {err}")
        if copy is not None:
            try:
                (self.model_store / copy).unlink(missing_ok=True)
                done.append(f"{copy} removed from the model store")
            except OSError as err:
                done.append(f"could not remove {copy} from the model store: {err.strerror}")
        if done:
            print(f"{PROG}: rolled back: {'; '.join(done)}", file=sys.stderr)

    def _registered(self, version: str) -> bool:
        versions = self.api.describe(self.model, "all")
        return any(str(entry.get("modelVersion")) == version for entry in versions)

    # -- 5. retire the old version ----------------------------------------------------------

    def _retire(self, old: str, keep_old: bool) -> None:
        if keep_old:
            self.say(f"{self.model} {old}: kept (--keep-old), no longer the default")
            return
        entry = self.api.entry(self.model, old)
        pids = ready_pids(entry.get("workers") or [])
        deadline = time.monotonic() + self.timeout
        with self._describing(old, len(pids)):
            while pids:
                for pid in pids:
                    if not is_parked(pid):
                        with contextlib.suppress(ProcessLookupError):
                            self.kill(pid, signal.SIGUSR2)
                if self._all_parked(pids, min(PARK_WINDOW, deadline - time.monotonic())):
                    pending = Management.pending_requests(self.api.entry(self.model, old))
                    if pending == 0:
                        break
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self.model} {old}: its workers did not drain in {self.timeout:g} s; "
                        f"it is still registered, no longer the default: unregister it later "
                        f"(DELETE {model_path(self.model, old)})"
                    )
                # a worker busy for long, or requests queued behind the describes: wait until
                # the parked ones serve again (PARK_SECONDS after their signal), then again
                self._until(lambda: not any(map(is_parked, pids)), PARK_SECONDS + 5)
            url = entry.get("modelUrl")
            self.api.unregister(self.model, old, timeout=self.timeout)
        if isinstance(url, str) and COPY_MARK in url and "/" not in url:
            with contextlib.suppress(OSError):
                (self.model_store / url).unlink()  # an earlier rollout's copy
        # the processes leave when the describe they hold ends (PARK_SECONDS after the
        # signal); they serve nothing meanwhile, and no worker list holds them any more
        self.say(f"{self.model} {old}: {len(pids)} worker(s) drained, unregistered")

    def _all_parked(self, pids: Sequence[int], timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while not all(map(is_parked, pids)):
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    @staticmethod
    def _until(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    @contextlib.contextmanager
    def _describing(self, version: str, senders: int) -> Iterator[None]:
        """``senders`` threads sending customized describes of ``version``, one at a time
        each, until the block ends: a parked worker holds one, so one per worker."""
        stop = threading.Event()
        threads = [
            threading.Thread(target=self._describe_until, args=(version, stop), daemon=True)
            for _ in range(senders)
        ]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()  # the describes still held end with the parks; nobody waits for them
            deadline = time.monotonic() + SENDER_JOIN_SECONDS
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _describe_until(self, version: str, stop: threading.Event) -> None:
        api = Management(self.api.url, self.api.token, timeout=PARK_SECONDS + 5)
        while not stop.is_set():
            with contextlib.suppress(ServerError):
                api.request("GET", model_path(self.model, version), {"customized": "true"})


def _message(reply: requests.Response) -> str:
    """The answer's JSON ``message``, else the start of its body, on one line."""
    with contextlib.suppress(ValueError):
        body = reply.json()
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return brief(body["message"], 300, written=True)
    return brief(" ".join(reply.text.split()), 300, written=True)


# --- the command -----------------------------------------------------------------------------


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1..1000")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Switch a served model to a new archive without failing a request: "
        "register it as a new version, wait until it is READY and warmed up, send it a smoke "
        "request, make it the default, drain and unregister the old version. The server needs "
        "enable_model_api=true (management API on loopback). ARCHIVE is registered from the "
        "server's model store: when it is elsewhere it is copied there as "
        "MODEL-VERSION-rollout-XXXXXXXX.mar (removed again if the rollout fails or when a later "
        "rollout retires that version). Run it with the server's TMPDIR: the model's operation "
        "lock, shared with servekit recycle and scale, lives there. Exit codes: 0 rolled out, "
        "1 failed and rolled back (the old version stays the default), 2 usage error or bad "
        "archive, 3 server unreachable.",
    )
    parser.add_argument("model", type=model_name, metavar="MODEL")
    parser.add_argument("archive", type=Path, metavar="ARCHIVE", help="the new version's .mar")
    parser.add_argument(
        "--workers", type=_count, metavar="N", help="default: as many as the default version has"
    )
    smoke = parser.add_mutually_exclusive_group()
    smoke.add_argument(
        "--smoke",
        type=Path,
        metavar="FILE",
        help="the smoke request's body (default: the project's examples/MODEL.json, .png, "
        ".jpg or .txt, else the sample `servekit examples` sends, if any)",
    )
    smoke.add_argument("--smoke-json", metavar="TEXT", help="the smoke request's JSON body")
    parser.add_argument(
        "--content-type",
        metavar="T",
        help="of the smoke request (default: from FILE's suffix; application/json for JSON)",
    )
    parser.add_argument("--management-url", type=base_url, default=DEFAULT_MANAGEMENT_URL)
    parser.add_argument("--inference-url", type=base_url, default=DEFAULT_INFERENCE_URL)
    parser.add_argument(
        "--model-store",
        type=Path,
        metavar="DIR",
        help="the server's model store (default: found from the server's process)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="the server's logs, for the reason a worker fails to load "
        "(default: found from the server's process)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_arg(allow_zero=False),
        default=120.0,
        metavar="S",
        help="for the new version to be ready, and for the old one to drain (default 120)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="TorchServe's key_file.json, when token authorization is on",
    )
    parser.add_argument(
        "--keep-old", action="store_true", help="leave the old version registered (not default)"
    )
    parser.add_argument(
        "--stats-dir",
        type=Path,
        help="where the model lock lives (default: as servekit recycle and scale)",
    )
    project.add_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        version = archive_version(args.archive, args.model)
        smoke = smoke_request(args)
        keys = None if args.key_file is None else load_keys(args.key_file)
    except UsageError as err:
        return _fail(str(err), 2)
    api = Management(args.management_url, keys.management if keys else None)
    try:
        return _roll_out(args, api, version, smoke, keys.inference if keys else None)
    except UsageError as err:
        return _fail(str(err), 2)
    except ManagementUnreachable as err:
        return _fail(f"{err}; is TorchServe running?", 3)
    except Unreachable as err:  # the smoke request's: its message names the URL
        return _fail(str(err), 3)
    except ServerError as err:
        return _fail(str(err), 1)


def _roll_out(
    args: argparse.Namespace, api: Management, version: str, smoke: Smoke, token: str | None
) -> int:
    served = api.models()
    if args.model not in served:
        listed = ", ".join(served) or "none"
        return _fail(f"{args.model} is not served (served: {listed}); register it first", 1)
    registered = [str(e.get("modelVersion")) for e in api.describe(args.model, "all")]
    if version in registered:
        return _fail(
            f"{args.model} version {version} is already registered; "
            "build the archive with another version",
            2,
        )
    default = api.entry(args.model)
    old = str(default.get("modelVersion"))
    workers = args.workers or max(1, len(default.get("workers") or []))
    if not args.keep_old:  # the old version's workers are drained by signals: can they be?
        problem = undrainable(f"{args.model} {old}", ready_pids(default.get("workers") or []))
        if problem is not None:
            return _fail(f"{problem} (--keep-old leaves the old version registered)", 1)
    frontend = find_frontend(args.management_url)
    store = args.model_store or (frontend.model_store if frontend else None)
    if store is None:
        return _fail(
            f"cannot find the model store of the TorchServe at {args.management_url} "
            "(not a process of this user here): give --model-store DIR",
            2,
        )
    log_dir = args.log_dir or (frontend.log_dir if frontend else None)
    rollout = Rollout(
        api, args.model, args.inference_url, store, log_dir, args.timeout, token, _say
    )
    started = time.monotonic()
    try:
        with (
            interruptible(PROG),
            model_lock(args.stats_dir or stats_dir(args.model), args.model, PROG),
        ):
            rollout.run(args.archive, version, old, workers, smoke, args.keep_old)
    except Interrupted as stop:
        finished = "drain" in rollout.timings.steps
        after = f", after the switch: the rollout to {version} finished first" if finished else ""
        return _fail(f"{stop}{after}", 128 + stop.signum)
    except Busy as err:
        return _fail(str(err), 1)
    except RolloutFailed as err:
        return _fail(f"{err}", 1)
    seconds = time.monotonic() - started
    _say(
        f"{args.model}: rolled out {old} -> {version} in {seconds:.1f} s ({rollout.timings.line()})"
    )
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
