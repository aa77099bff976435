"""Build ``.mar`` files from model specs with ``torch-model-archiver``.

Each archive carries the project's whole ``handlers`` package and the handler runtime
(``servekit/runtime``), so the handler imports exactly what was archived and the archive serves
where only the model's own dependencies are installed, and the effective model config. A build is
skipped when a digest of all its inputs matches the one recorded beside the archive.

    servekit archive                 # every spec in config/, only what changed
    servekit archive iris --force    # one model, rebuilt even if up to date
    servekit archive --project ~/my-models
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

import servekit.runtime
from servekit import project
from servekit.config.specs import ModelSpec, effective_config, load_spec, read_yaml
from servekit.errors import ArchiveError, ConfigError, ToolkitError, os_error_text
from servekit.serve import backends
from servekit.serve.reproducible import make_public, normalize_mar, write_public

HANDLER_PACKAGE = "handlers"
RUNTIME = Path(str(servekit.runtime.__file__)).parent


@dataclasses.dataclass(frozen=True)
class BuildResult:
    name: str
    path: Path
    rebuilt: bool


def handler_sources(root: Path) -> dict[str, Path]:
    """What every archive ships besides the spec's files: the archive-relative name of each
    file of the project's handler package (its whole tree: a handler may import
    ``handlers.common.util``) and of the handler runtime, and where it is read."""
    package = root / HANDLER_PACKAGE
    sources = {
        f"{HANDLER_PACKAGE}/{p.relative_to(package).as_posix()}": p
        for p in sorted(package.rglob("*"))
        if p.is_file() and _shipped(p.relative_to(package))
    }
    sources["servekit/__init__.py"] = RUNTIME.parent / "__init__.py"
    sources |= {f"servekit/runtime/{p.name}": p for p in sorted(RUNTIME.glob("*.py"))}
    return sources


def _shipped(relative: Path) -> bool:
    """Not bytecode, caches or hidden files (editor swap files, .DS_Store)."""
    return relative.suffix not in (".pyc", ".pyo") and not any(
        part == "__pycache__" or part.startswith(".") for part in relative.parts
    )


def inputs_digest(spec: ModelSpec, config: Mapping[str, Any], root: Path) -> str:
    """sha256 over every input of an archive: files, effective config, archiver version."""
    digest = hashlib.sha256()
    digest.update(f"torch-model-archiver=={version('torch-model-archiver')}\n".encode())
    digest.update(b"normalized zip v1\n")  # servekit.serve.reproducible; bump when it changes
    digest.update(yaml.safe_dump(dict(config), sort_keys=True).encode())
    for name, source in handler_sources(root).items():
        digest.update(name.encode() + b"\0")
        digest.update(source.read_bytes())
    for path in spec.inputs():
        digest.update(_relative(path, root).encode() + b"\0")
        digest.update(path.read_bytes())
    digest.update(backends.digest_inputs(config))  # a backend's exporter, quantizer and gate
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the repo; a spec kept elsewhere (tests, tools) counts by name."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


def file_sha256(path: Path) -> str:
    """The file's sha256, read in chunks (weights files are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build(
    spec: ModelSpec, defaults: Mapping[str, Any], root: Path, store: Path, force: bool = False
) -> BuildResult:
    """Build ``store/<name>.mar`` unless it is up to date."""
    config = effective_config(spec, defaults)
    mar = store / f"{spec.name}.mar"
    stamp = store / f"{spec.name}.mar.inputs"
    digest = inputs_digest(spec, config, root)
    sha = store / f"{spec.name}.mar.sha256"
    if not force and _up_to_date(mar, stamp, sha, digest):
        for path in (mar, stamp, sha):
            if path.is_file():
                make_public(path)
        return BuildResult(spec.name, mar, rebuilt=False)
    _writable(store)
    with tempfile.TemporaryDirectory(prefix=f"archive-{spec.name}-") as tmp:
        _archive(spec, config, root, store, Path(tmp))
    normalize_mar(mar)
    write_public(stamp, digest + "\n")
    write_public(sha, f"{file_sha256(mar)}  {mar.name}\n")
    return BuildResult(spec.name, mar, rebuilt=True)


def _writable(store: Path) -> None:
    """Create ``store``; a ``PermissionError`` naming it (not a temp file in it) unless it
    can be written."""
    store.mkdir(parents=True, exist_ok=True)
    if not os.access(store, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(store))


def _up_to_date(mar: Path, stamp: Path, sha: Path, digest: str) -> bool:
    """The archive was built from these inputs and is still the file that build wrote
    (a truncated or overwritten .mar no longer matches its recorded sha256)."""
    if not (mar.is_file() and stamp.is_file() and sha.is_file()):
        return False
    if stamp.read_text().strip() != digest:
        return False
    recorded = sha.read_text().split()
    return bool(recorded) and recorded[0] == file_sha256(mar)


def _archive(
    spec: ModelSpec, config: Mapping[str, Any], root: Path, store: Path, tmp: Path
) -> None:
    stage = stage_files(spec, root, tmp / "stage")
    backends.stage(spec, config, stage)  # an ONNX backend: exported, gated, or refused
    config_file = tmp / "model-config.yml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=True))
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        spec.name,
        "--version",
        spec.version,
        "--handler",
        str(spec.handler),
        "--extra-files",
        str(stage),
        "--config-file",
        str(config_file),
        "--export-path",
        str(store),
        "--force",
    ]
    if spec.serialized_file is not None and backends.carries_weights(config):
        command += ["--serialized-file", str(spec.serialized_file)]
    # The archiver stages files in $TMPDIR/<model name>: give it a private TMPDIR.
    scratch = tmp / "archiver-tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ArchiveError(
            f"torch-model-archiver failed for '{spec.name}' ({spec.source}): "
            f"{archiver_error(done.stderr + done.stdout)}"
        )


def stage_files(spec: ModelSpec, root: Path, stage: Path) -> Path:
    """Copy into ``stage`` the files an archive carries besides the model file: the handler
    package, the runtime and the spec's extra files."""
    for name, source in handler_sources(root).items():
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, stage / name)
    for extra in spec.extra_files:
        shutil.copy2(extra, stage / extra.name)
    return stage


_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*(?P<kind>\w*(?:Error|Exception)\w*): ?(?P<text>.*)$")


def archiver_error(output: str) -> str:
    """The archiver's own reason, not its traceback: the last exception line (with the
    lines that continue its message), else the last line of output."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[index])
        if match:
            rest = [line.strip() for line in lines[index + 1 :]]
            return " ".join([f"{match['kind']}: {match['text']}".rstrip(": "), *rest])
    return lines[-1].strip() if lines else "it failed with no output"


# --- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit archive",
        description="Build every model's .mar into the project's model_store/ (only what "
        "changed). Exit codes: 0 built, up to date or no spec to build, 1 a build failed, "
        "2 usage or bad input (only bad specs failed; the others are built).",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="models (default: every spec)")
    parser.add_argument("-f", "--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--config-dir", type=Path, metavar="DIR", help="the specs (default: the project's config/)"
    )
    parser.add_argument(
        "--defaults", type=Path, metavar="FILE", help="default: the project's model-config.yml"
    )
    parser.add_argument(
        "--store", type=Path, metavar="DIR", help="default: the project's model_store/"
    )
    project.add_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        where = project.from_args(args)
        specs_dir = args.config_dir or where.specs_dir
        defaults_file = args.defaults or where.model_config
        # a project may do without model-config.yml; a --defaults file must exist
        defaults = read_yaml(defaults_file) if args.defaults or defaults_file.is_file() else {}
        known = sorted(p.stem for p in specs_dir.glob("*.yml"))
    except ConfigError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{parser.prog}: error: {os_error_text(err)}", file=sys.stderr)
        return 2
    if not known and not args.names:  # a new project: nothing to build yet is not an error
        print(f"no model spec (*.yml) in {shown_path(specs_dir, where.root)}: nothing to archive")
        return 0
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(
            f"no spec in {specs_dir} for: {', '.join(unknown)} "
            f"(there are: {', '.join(known) or 'none'})"
        )
    store = args.store or where.model_store
    if store.exists() and not store.is_dir():
        parser.error(f"--store {store} is not a directory: give the directory for the .mar files")
    names = sorted(set(args.names)) if args.names else known
    failed: list[str] = []
    bad_specs = 0  # failures that are bad input (a spec), not a failed build
    for name in names:
        try:
            spec = load_spec(specs_dir / f"{name}.yml", where.root)
            result = build(spec, defaults or {}, where.root, store, force=args.force)
        except ToolkitError as err:  # this spec only: build the others
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            print(f"{name:<16} {'FAILED':<11}", flush=True)
            failed.append(name)
            bad_specs += isinstance(err, ConfigError)
            continue
        except OSError as err:  # the store or a shared input (a handler): every build fails
            print(f"{parser.prog}: error: {os_error_text(err)}", file=sys.stderr)
            return 2
        state = "built" if result.rebuilt else "up to date"
        print(f"{result.name:<16} {state:<11} {shown_path(result.path, where.root)}", flush=True)
    if failed:
        print(
            f"{parser.prog}: error: {len(failed)} of {len(names)} failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        # only bad specs: bad input, as show-config says of the same spec (2); a build failed: 1
        return 2 if bad_specs == len(failed) else 1
    return 0


def shown_path(path: Path, root: Path) -> Path:
    """``path`` relative to ``root`` when it is below it, else as it is (for messages)."""
    return path.relative_to(root) if path.is_relative_to(root) else path


if __name__ == "__main__":
    sys.exit(main())
