"""``servekit health``: is a running TorchServe able to serve? ``/ping``, then every model's
workers (``scripts/health_check.py`` is the same command, for the probes).

    servekit health                                  # every registered model, once
    servekit health --model iris --wait 60           # poll until iris is up (or 60 s)
    servekit health --customized --json --key-file key_file.json
    servekit health --probe readiness --timeout 2    # a Kubernetes readiness probe

``/ping`` alone is not enough: it stays 200 while a crash-looping worker has retries left, and
says Healthy when a model failed to register. Exit codes: 0 healthy, 1 unhealthy, 2 usage
error, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from servekit import project
from servekit.errors import ConfigError
from servekit.health.probe import (
    DEFAULT_INFERENCE_URL,
    DEFAULT_MANAGEMENT_URL,
    DEFAULT_TIMEOUT,
    Auth,
    Target,
    probe,
    wait_until_healthy,
)
from servekit.health.render import render_json, render_text
from servekit.health.verdict import EXIT_USAGE, PROBES, HealthReport

PROG = "servekit health"
PROBE_HELP = (
    "startup: every model has minWorkers READY (and, with --customized, its handler is ready: "
    "warmed up); readiness: the same and no model's job queue is full; liveness: fails only "
    "when the frontend is down or a model has failed for good (/ping 500 after its "
    "maxRetryTimeoutInSec); default: like startup, and reports queue saturation"
)


class UsageError(ConfigError):
    """A bad option value or key file (exit 2); the message names what to fix."""


# --- options, checked at the edge -------------------------------------------------------------


def load_keys(path: Path) -> Auth:
    """Read TorchServe's ``key_file.json``; any problem is a ``UsageError`` naming the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(
            f"cannot read key file {path}: {err.strerror or err}; TorchServe "
            "writes key_file.json in the directory it was started from"
        ) from None
    except ValueError as err:
        raise UsageError(f"key file {path} is not valid JSON: {err}") from None
    return Auth(
        inference=_key(document, "inference", path), management=_key(document, "management", path)
    )


def _key(document: object, api: str, path: Path) -> str:
    section = document.get(api) if isinstance(document, dict) else None
    key = section.get("key") if isinstance(section, dict) else None
    if not isinstance(key, str) or not key:
        raise UsageError(
            f"key file {path} has no string '{api}.key'; expected TorchServe's "
            f'layout {{"{api}": {{"key": "..."}}, ...}}'
        )
    return key


def base_url(value: str) -> str:
    """A validated ``http(s)://host[:port]`` base URL without trailing slash."""
    if "://" not in value:
        raise argparse.ArgumentTypeError(f"{value!r} has no scheme; did you mean 'http://{value}'?")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(
            f"{value!r} has scheme {parts.scheme!r}; use http:// or https://, "
            f"e.g. {DEFAULT_INFERENCE_URL}"
        )
    try:
        parts.port  # noqa: B018 -- raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} has an invalid port") from None
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} has no host; e.g. {DEFAULT_INFERENCE_URL}")
    return value.rstrip("/")


def seconds_arg(allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            allowed = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {allowed}")
        return value

    return parse


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")  # what TorchServe registers


def model_name(text: str) -> str:
    """A model name TorchServe could have registered (letters, digits, ``_-.``)."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError("model name must not be empty")
    if not MODEL_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a model name TorchServe accepts (a letter or digit, then letters, "
            "digits, '_', '-' or '.')"
        )
    return name


# --- the command ----------------------------------------------------------------------------


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check that TorchServe and its models can serve. Exit codes: "
        "0 healthy, 1 unhealthy, 2 usage error, 3 server unreachable.",
    )
    parser.add_argument("--inference-url", type=base_url, default=DEFAULT_INFERENCE_URL)
    parser.add_argument("--management-url", type=base_url, default=DEFAULT_MANAGEMENT_URL)
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        type=model_name,
        default=[],
        metavar="NAME",
        help="check only this model (repeatable; default: every registered)",
    )
    parser.add_argument(
        "--wait",
        type=seconds_arg(allow_zero=True),
        default=0.0,
        metavar="SECONDS",
        help="poll until healthy or this many seconds have passed",
    )
    parser.add_argument(
        "--customized",
        action="store_true",
        help="also require the handler's describe_handle() status 'ready'",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--probe", choices=PROBES, default="default", help=PROBE_HELP)
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="TorchServe's logs/ directory: show why a model's initialize failed "
        "(default: the project's logs/ when it exists)",
    )
    project.add_argument(parser)
    add_access_arguments(parser)
    return parser


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """``--key-file`` and ``--timeout``: how to talk to TorchServe (health, exporter)."""
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="TorchServe's key_file.json, when token authorization is on",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_arg(allow_zero=False),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="per-request timeout (default: %(default)s)",
    )


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the CLI; returns the exit code (argparse errors included) instead of exiting."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        auth = Auth() if args.key_file is None else _load_keys_or_exit(parser, args.key_file)
        log_dir = args.log_dir or _project_logs(parser, args)
    except SystemExit as stop:  # argparse's own usage errors, and --help
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    target = Target(args.inference_url, args.management_url, args.timeout, auth)
    try:
        report = wait_until_healthy(
            lambda: probe(
                target, args.models, customized=args.customized, mode=args.probe, log_dir=log_dir
            ),
            args.wait,
        )
    except KeyboardInterrupt:
        return 130
    _emit(report, prog, as_json=args.json)
    return report.exit_code


def _load_keys_or_exit(parser: argparse.ArgumentParser, path: Path) -> Auth:
    try:
        return load_keys(path)
    except UsageError as err:
        parser.error(str(err))


def _project_logs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path | None:
    """The project's ``logs/`` when it exists; no project is needed (a probe in a pod has
    none), but a ``--project`` that is not one is a usage error."""
    try:
        root = project.from_args(args, check=args.project is not None)
    except ConfigError as err:
        parser.error(str(err))
    try:
        return root.logs if root.logs.is_dir() else None
    except OSError:  # a directory it may not list (the probe in a pod reads no logs either)
        return None


def _emit(report: HealthReport, prog: str, as_json: bool) -> None:
    if report.unreachable:
        print(f"{prog}: error: {report.error}", file=sys.stderr)
    if as_json:
        print(render_json(report))
    elif not report.unreachable:
        print(render_text(report))


if __name__ == "__main__":
    sys.exit(main())
