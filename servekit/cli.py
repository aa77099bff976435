"""``servekit``: one command, with a subcommand for each thing the toolkit does.

Each subcommand is a module with ``main(argv) -> int`` and its own ``--help``; this file only
dispatches, importing the module when its command runs (``servekit health`` never imports torch).
Exit codes everywhere: 0 ok, 1 a check failed, 2 usage or bad input, 3 server unreachable.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

from servekit import __version__
from servekit.errors import ConfigError, ToolkitError, Unreachable, os_error_text

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3


class Command(NamedTuple):
    module: str
    summary: str
    extra: str = ""  # the pip extra its imports need, named when one is missing


COMMANDS: dict[str, Command] = {
    # scaffold
    "init": Command("servekit.scaffold.init", "create a new, working project in a directory"),
    "new-model": Command(
        "servekit.scaffold.new_model", "add a model from its weights: handler, spec, tests"
    ),
    # config
    "validate": Command(
        "servekit.config.validate", "check config.properties, model-config.yml and specs"
    ),
    "show-config": Command(
        "servekit.config.show", "a model's effective config and where each value comes from"
    ),
    "config-docs": Command("servekit.config.schema_docs", "write the config key reference"),
    # serve
    "archive": Command("servekit.serve.archive", "build every model's .mar into model_store/"),
    "inspect": Command("servekit.serve.marinfo", "show a .mar and check it against its spec"),
    "gate": Command("servekit.serve.gate", "check a model's ONNX backends vs eager", "onnx"),
    "examples": Command("servekit.serve.examples", "how to call the served models, live"),
    # health
    "health": Command("servekit.health.cli", "probe /ping and every model's READY workers"),
    "recycle": Command("servekit.health.recycle", "recycle workers past a memory limit"),
    # stopping and changing a running server without losing a request
    "stop": Command("servekit.ops.drain", "drain a running server, then stop it"),
    "run": Command("servekit.ops.supervise", "run TorchServe; drain it on SIGTERM/SIGINT"),
    "scale": Command("servekit.ops.scale", "scale a model's workers without losing a request"),
    "rollout": Command("servekit.ops.rollout", "switch a model to a new archive, under load"),
    # observe
    "exporter": Command(
        "servekit.observe.exporter", "Prometheus metrics TorchServe lacks: READY, queue, status"
    ),
    # queue
    "bridge": Command("servekit.queue.bridge", "serve requests from RabbitMQ into Redis", "queue"),
    "ask": Command("servekit.queue.client", "submit a request through the queue bridge", "queue"),
    # bench
    "bench": Command("servekit.bench.run", "load-test a served model", "bench"),
    "compare": Command(
        "servekit.bench.compare", "TorchServe vs the in-process limit and peers", "bench"
    ),
    "tune": Command("servekit.bench.tune", "find batchSize, maxBatchDelay, workers", "bench"),
    "bench-bridge": Command(
        "servekit.bench.bridge", "the queue bridge vs direct HTTP", "bench,queue"
    ),
    "bench-ops": Command("servekit.bench.ops", "503 latency, recovery, recycling", "bench"),
    "bench-drain": Command(
        "servekit.bench.drain", "stopping under load: TorchServe's stop vs the drain", "bench"
    ),
    "bench-observe": Command("servekit.bench.observe", "what metrics and scraping cost", "bench"),
    "profile": Command("servekit.bench.profile", "where a served model's time goes", "bench"),
    "limit": Command(
        "servekit.bench.baselines.limit", "a model's in-process throughput limit", "bench"
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: servekit [--version] COMMAND [--help] [ARGS]  (servekit {__version__})",
        "",
        "commands:",
        *(f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()),
        "",
        "Commands that work on a project take it from --project DIR or the current directory.",
        "Exit codes: 0 ok, 1 a check failed, 2 usage or bad input, 3 server unreachable.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `servekit show-config iris | head`: the reader left, not an error
        _quiet_stdout()
        return OK
    try:
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
    except BrokenPipeError:
        _quiet_stdout()
    return code


def _main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        _say(usage())
        return OK if args else USAGE
    if args[0] == "--version":
        _say(f"servekit {__version__}")
        return OK
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"servekit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return USAGE
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as err:
        if not command.extra or (err.name or "").startswith("servekit"):
            raise
        print(
            f"servekit {name}: needs {err.name}, part of the [{command.extra}] extra: "
            f"pip install 'torchserve-kit[{command.extra}]'",
            file=sys.stderr,
        )
        return USAGE
    try:
        return int(module.main(rest) or 0)
    except SystemExit as done:  # argparse's --help (0) and usage errors (2)
        return done.code if isinstance(done.code, int) else (OK if done.code is None else USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except ConfigError as err:  # bad input: a file, a key, a value, not a project
        print(f"servekit {name}: {err}", file=sys.stderr)
        return USAGE
    except Unreachable as err:
        print(f"servekit {name}: {err}", file=sys.stderr)
        return UNREACHABLE
    except ToolkitError as err:
        print(f"servekit {name}: {err}", file=sys.stderr)
        return FAILED
    except OSError as err:  # a file or directory the command needs cannot be read or written
        print(f"servekit {name}: {os_error_text(err)}", file=sys.stderr)
        return USAGE


def _say(text: str) -> None:
    """Print to stdout; a reader gone already (``servekit | true``) changes no exit code."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _quiet_stdout()


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
