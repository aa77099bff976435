"""``servekit examples``: how to call the models a running TorchServe serves, with a live answer
from each model it has a sample input for: the project's ``examples/<model>.json`` (``.png``,
``.jpg``, ``.txt``; ``servekit new-model`` writes one), else the example models' own.

    servekit examples                                   # against http://127.0.0.1:8080
    servekit examples --inference-url http://host:8080 --management-url http://host:8081

The models are the ones the management API lists. When ``digits`` is served, a held-out digit
is written to ``digit.png`` in the project directory for its ``curl`` example (skipped, saying
why, when that directory cannot be written). Exit codes: 0 every live answer succeeded, 1 one
failed (or ``/ping`` is not healthy), 2 usage error, 3 the server is unreachable.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from servekit import project
from servekit.errors import Unreachable
from servekit.runtime.decoding import brief
from servekit.serve.archive import shown_path
from servekit.serve.management import Management

DIGIT_PNG = "digit.png"


@dataclasses.dataclass(frozen=True)
class Sample:
    """A model's sample input: as ``curl`` options and as ``requests.post`` arguments."""

    curl: str
    post: Mapping[str, Any]


ANSWER_CHARS = 160  # a live answer is shown whole when it is short (one line of a terminal)


def samples(digit: Path | None) -> dict[str, Sample]:
    """The example models' inputs; ``digits`` only when its image could be written."""
    known = {
        "iris": Sample(
            "-H 'Content-Type: application/json' -d '{\"features\": [5.1, 3.5, 1.4, 0.2]}'",
            {"json": {"features": [5.1, 3.5, 1.4, 0.2]}},
        ),
        "empty_model": Sample("", {}),
    }
    if digit is not None:
        known["digits"] = Sample(
            f"-H 'Content-Type: image/png' --data-binary @{shown_path(digit, Path.cwd())}",
            {"data": digit.read_bytes(), "headers": {"Content-Type": "image/png"}},
        )
    return known


EXAMPLE_TYPES = {
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".txt": "text/plain",
}
MAX_EXAMPLE_BYTES = 10 << 20  # a sample request, not a dataset


def project_samples(root: Path, models: Sequence[str]) -> dict[str, Sample]:
    """The example request of each served model the project has one for: ``examples/<model>``
    with a known suffix (``servekit new-model`` writes one)."""
    found: dict[str, Sample] = {}
    for model in models:
        for suffix, content_type in EXAMPLE_TYPES.items():
            path = root / "examples" / f"{model}{suffix}"
            try:
                if not path.is_file() or path.stat().st_size > MAX_EXAMPLE_BYTES:
                    continue
                body = path.read_bytes()
            except OSError:
                continue
            found[model] = Sample(
                f"-H 'Content-Type: {content_type}' --data-binary @{shown_path(path, Path.cwd())}",
                {"data": body, "headers": {"Content-Type": content_type}},
            )
            break
    return found


def write_digit(root: Path) -> tuple[Path | None, str]:
    """``root/digit.png`` (a held-out digit) and what it shows, or ``None`` and why not."""
    try:  # the example models' data: scikit-learn, part of the [examples] extra
        from servekit.datasets import digit_png, digits_split
    except ModuleNotFoundError as err:
        return (
            None,
            f"no digits example: {err.name} is missing (pip install 'torchserve-kit[examples]')",
        )
    split = digits_split()
    path = root / DIGIT_PNG
    try:
        path.write_bytes(digit_png(split.x_test[0]))
    except OSError as err:
        return None, f"cannot write {path} ({err.strerror or err}): no digits example"
    return path, f"{shown_path(path, Path.cwd())} is a held-out '{split.y_test[0]}'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit examples",
        description="Print example calls of the models a running TorchServe serves, and a live "
        "answer from each one servekit has a sample input for. Exit codes: 0 ok, 1 a live "
        "answer failed, 2 usage error, 3 server unreachable.",
    )
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8082")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    project.add_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = project.from_args(args, check=False).root
    if not root.is_dir():
        parser.error(f"project directory {root} does not exist")
    url, mgmt = args.inference_url.rstrip("/"), args.management_url.rstrip("/")
    try:
        ping = requests.get(f"{url}/ping", timeout=args.timeout)
    except requests.RequestException as err:
        raise Unreachable(
            f"no answer from {url}/ping ({err.__class__.__name__}): is TorchServe up? "
            "(start it, or give --inference-url)"
        ) from None
    models = Management(mgmt, timeout=args.timeout).models()
    healthy = ping.status_code == 200
    print(f"TorchServe at {url} answers /ping with {ping.status_code} {shown(ping.text)}")
    if not models:
        print(f"No model is registered at {mgmt}: register one (servekit archive, load_models).")
        return 0 if healthy else 1
    digit, why = write_digit(root) if "digits" in models else (None, "")
    known = project_samples(root, models) | samples(digit)
    show_calls(url, mgmt, models, known)
    print(
        f"  curl -s {args.metrics_url.rstrip('/')}/metrics   # Prometheus (metrics_mode=prometheus)"
    )
    print("  servekit exporter   # READY workers, queues, handler status on :8083 for Prometheus")
    if why:
        print(f"\n({why})")
    answered = live_answers(url, [m for m in models if m in known], known, args.timeout)
    return 0 if healthy and answered else 1


def show_calls(url: str, mgmt: str, models: Sequence[str], known: Mapping[str, Sample]) -> None:
    """A ``curl`` per model (its sample input, else a placeholder) and its describe."""
    print(f"It serves: {', '.join(models)}. Try:\n")
    print(f"  curl -s {url}/ping")
    for model in models:
        sample = known.get(model)
        data = sample.curl if sample else "-d @request.json   # the input: see its describe"
        print(f"  curl -s -X POST {url}/predictions/{model} {data}".rstrip())
        print(f"  curl -s '{mgmt}/models/{model}?customized=true'   # its handler's metadata")
    print(f"  servekit health --customized --inference-url {url} --management-url {mgmt}")


def live_answers(
    url: str, models: Sequence[str], known: Mapping[str, Sample], timeout: float
) -> bool:
    """Post each model's sample and print the answer; False when one failed."""
    if models:
        print("\nLive answers:")
    ok = True
    for model in models:
        target = f"{url}/predictions/{model}"
        try:
            reply = requests.post(target, timeout=timeout, **known[model].post)
        except requests.RequestException as err:
            raise Unreachable(f"no answer from {target} ({err.__class__.__name__})") from None
        print(f"  {model}: {reply.status_code} {shown(reply.text)}")
        ok &= reply.ok
    return ok


def shown(body: str) -> str:
    """An answer's body on one line, cut short."""
    return brief(" ".join(body.split()), ANSWER_CHARS, written=True)


if __name__ == "__main__":
    sys.exit(main())
