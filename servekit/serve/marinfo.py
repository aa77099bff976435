"""Read a built ``.mar`` and check it against the model spec it was built from.

The archive may be anything (corrupt, hostile, a zip bomb): ``read_mar`` answers with a
``MarInfo`` or an ``ArchiveError`` naming the file and the problem. Entries are streamed
through sha256 in chunks; only the manifest and the model config (at most
``MAX_METADATA_BYTES`` each) are kept in memory, and ``MAX_TOTAL_BYTES`` bounds the work.

>>> info = read_mar(Path("model_store/iris.mar"))              # doctest: +SKIP
>>> info.manifest["model"]["modelName"], sorted(info.files)[:2]  # doctest: +SKIP
('iris', ['MAR-INF/MANIFEST.json', 'handlers/__init__.py'])
>>> check_against_spec(info, spec, defaults, root)                # doctest: +SKIP
[]

The command, ``servekit inspect NAME|FILE.mar [--json]``, shows the manifest, model config and
files, and checks them against the project's ``config/<modelName>.yml``. Exit codes: 0 the
archive matches its spec, 1 it does not (or cannot be read), 2 usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import itertools
import json
import re
import sys
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from servekit import project
from servekit.config.findings import jsonable, printable, show
from servekit.config.limits import is_file, not_a_file, read_capped
from servekit.config.specs import ModelSpec, effective_config, load_spec, read_yaml
from servekit.config.yamlpos import load_yaml
from servekit.errors import ArchiveError, ConfigError, ToolkitError
from servekit.serve import backends
from servekit.serve.archive import file_sha256, handler_sources, shown_path
from servekit.serve.reproducible import MANIFEST

CHUNK = 1 << 20
MAX_METADATA_BYTES = 1 << 20  # the manifest and the model config: a few hundred bytes
MAX_ENTRIES = 10_000
MAX_TOTAL_BYTES = 16 << 30  # uncompressed, all entries: the largest model here is 0.1 GB
# Deflate reaches about 1000x on zeros; weights and code compress less than 10x. An entry
# over MAX_RATIO x its compressed size (and over RATIO_FLOOR bytes) is a bomb, not a model.
MAX_RATIO = 200
RATIO_FLOOR = 4 << 20
MAX_MANIFEST_DEPTH = 16  # a manifest nests two levels
LOCAL_HEADER = 30  # bytes of a zip local file header before its name
READABLE = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}  # what Java reads
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # TorchServe's model name rule


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file of the archive: its uncompressed size and sha256."""

    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class MarInfo:
    """What a ``.mar`` holds: its manifest, its model config and every file's size and digest."""

    path: Path
    manifest: Mapping[str, Any]
    model_config: Mapping[str, Any] | None
    files: Mapping[str, Entry]

    def sha256(self) -> str:
        return file_sha256(self.path)

    def recorded_sha256(self) -> str | None:
        """The digest ``make archive`` wrote beside the archive, if any."""
        stamp = self.path.with_name(self.path.name + ".sha256")
        if not is_file(stamp):
            return None
        try:
            words = read_capped(stamp, 4096).decode("ascii", "replace").split()
        except ConfigError:
            return "(unreadable)"
        return words[0] if words else "(empty)"


def read_mar(path: Path, max_total: int = MAX_TOTAL_BYTES, max_ratio: int = MAX_RATIO) -> MarInfo:
    """Open ``path``; ``ArchiveError`` names what is wrong with a broken archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            _check_entries(path, infos, max_total, max_ratio)
            files, kept = _stream(path, archive, infos)
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise ArchiveError(f"{path}: not a readable .mar (zip) file: {err}") from None
    except UnicodeDecodeError as err:
        raise ArchiveError(f"{path}: an entry name is not valid UTF-8: {err.reason}") from None
    manifest = _manifest(path, kept.get(MANIFEST))
    config_name = manifest["model"].get("configFile")
    config = _model_config(path, config_name, kept.get(config_name)) if config_name else None
    return MarInfo(path, manifest, config, files)


def _check_entries(
    path: Path, infos: list[zipfile.ZipInfo], max_total: int, max_ratio: int
) -> None:
    """Refuse, before reading a byte, what no TorchServe archive holds."""
    if len(infos) > MAX_ENTRIES:
        raise ArchiveError(f"{path}: {len(infos)} entries; a .mar holds at most {MAX_ENTRIES}")
    names = [i.filename for i in infos]
    if MANIFEST not in names:
        raise ArchiveError(f"{path}: no {MANIFEST}; not built by torch-model-archiver")
    if len(set(names)) != len(names):
        raise ArchiveError(f"{path}: an entry name appears twice; the archive is corrupt")
    for info in infos:
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{path}: {info.filename} is encrypted; TorchServe cannot read it")
        if info.compress_type not in READABLE:
            raise ArchiveError(
                f"{path}: {info.filename} uses compression method {info.compress_type}; "
                "TorchServe reads only stored and deflate entries"
            )
    for info in infos:
        if info.file_size > RATIO_FLOOR and info.file_size > max_ratio * info.compress_size:
            raise ArchiveError(
                f"{path}: {info.filename} declares {info.file_size} bytes from "
                f"{info.compress_size} compressed, over {max_ratio}x (a zip bomb?)"
            )
    _check_overlap(path, infos)
    total = sum(i.file_size for i in infos)
    if total > max_total:
        raise ArchiveError(
            f"{path}: its entries declare {total} bytes uncompressed, over the {max_total} "
            "bytes this reader inspects (a zip bomb?)"
        )


def _check_overlap(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse entries whose data overlap (a zip bomb reuses one deflate stream many times)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for first, second in itertools.pairwise(ordered):
        # a lower bound of where the first entry's data end: its name may take more bytes
        # than characters, and local extra fields are not counted
        end = first.header_offset + LOCAL_HEADER + len(first.orig_filename) + first.compress_size
        start = second.header_offset
        if start < end:
            raise ArchiveError(
                f"{path}: {second.filename} overlaps {first.filename} in the file "
                "(entries sharing data: a zip bomb?)"
            )


def _stream(
    path: Path, archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]
) -> tuple[dict[str, Entry], dict[str, bytes]]:
    """Each entry's size and sha256, read in chunks; the small metadata entries kept."""
    files: dict[str, Entry] = {}
    kept: dict[str, bytes] = {}
    for info in infos:
        keep = info.filename == MANIFEST or info.filename.endswith((".yml", ".yaml"))
        try:
            with archive.open(info) as stream:
                files[info.filename], data = _digest(stream, keep)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise ArchiveError(f"{path}: {info.filename} is corrupt: {err}") from None
        if data is not None:
            kept[info.filename] = data
    return files, kept


def _digest(stream: IO[bytes], keep: bool) -> tuple[Entry, bytes | None]:
    digest = hashlib.sha256()
    size = 0
    head = bytearray()
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if keep and len(head) <= MAX_METADATA_BYTES:
            head += chunk[: MAX_METADATA_BYTES + 1 - len(head)]
    small = keep and len(head) <= MAX_METADATA_BYTES
    return Entry(size, digest.hexdigest()), bytes(head) if small else None


def _manifest(path: Path, data: bytes | None) -> dict[str, Any]:
    where = f"{path}: {MANIFEST}"
    if data is None:
        raise ArchiveError(f"{where} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, huge numbers
        raise ArchiveError(f"{where} is not JSON: {str(err)[:200]}") from None
    if _depth(manifest) > MAX_MANIFEST_DEPTH:
        raise ArchiveError(f"{where} nests deeper than {MAX_MANIFEST_DEPTH} levels")
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise ArchiveError(f'{where} is not {{"model": {{...}}, ...}}; not a .mar manifest')
    for field in ("modelName", "handler", "serializedFile", "configFile", "modelVersion"):
        if model.get(field) is not None and not isinstance(model[field], str):
            raise ArchiveError(f"{where}: model.{field} is not a string")
    if not isinstance(model.get("modelName"), str) or not MODEL_NAME.fullmatch(model["modelName"]):
        raise ArchiveError(f"{where}: model.modelName is missing or not a model name")
    return dict(manifest)


def _depth(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack += [(child, depth + 1) for child in children]
    return deepest


def _model_config(path: Path, name: str, data: bytes | None) -> dict[str, Any]:
    where = f"{path}: {name}"
    if data is None:
        raise ArchiveError(f"{where}: the manifest's configFile is missing or too large")
    try:
        config = load_yaml(data.decode("utf-8")).data
    except UnicodeDecodeError as err:
        raise ArchiveError(f"{where} is not UTF-8: {err.reason}") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ArchiveError(f"{where} is not valid YAML: {problem}") from None
    if config is not None and not isinstance(config, dict):
        raise ArchiveError(f"{where} is a {type(config).__name__}, not a mapping")
    return dict(config or {})


def check_against_spec(
    info: MarInfo, spec: ModelSpec, defaults: Mapping[str, Any], root: Path
) -> list[str]:
    """Every difference between the archive and what its spec says it should hold."""
    model = info.manifest.get("model", {})
    config = effective_config(spec, defaults)
    problems = [
        f"manifest {field} is {show(model.get(field))}; the spec says {show(want)}"
        for field, want in (
            ("modelName", spec.name),
            ("modelVersion", spec.version),
            ("handler", spec.handler.name),
            ("serializedFile", _weights(spec, config)),
        )
        if model.get(field) != want
    ]
    if info.model_config != config:
        problems.append(
            f"model config differs from model-config.yml + {spec.source.name}: "
            f"archive {show(info.model_config)}, spec {show(config)}"
        )
    expected = handler_sources(root)
    expected |= {p.name: p for p in [spec.handler, *spec.extra_files]}
    if spec.serialized_file is not None and _weights(spec, config) is not None:
        expected[spec.serialized_file.name] = spec.serialized_file
    for name, source in sorted(expected.items()):
        if name not in info.files:
            problems.append(f"{name} is missing from the archive")
        elif info.files[name].sha256 != file_sha256(source):
            problems.append(f"{name} differs from {shown_path(source, root)}")
    built = backends.built_files(config)  # an ONNX backend and its gate figures
    problems += [f"{name} is missing from the archive" for name in built if name not in info.files]
    known = {*expected, *built, MANIFEST, model.get("configFile")}
    problems += [
        f"{name} is in the archive but not in the spec" for name in info.files if name not in known
    ]
    recorded = info.recorded_sha256()
    if recorded is not None and recorded != info.sha256():
        problems.append(f"sha256 is {info.sha256()}; {info.path.name}.sha256 records {recorded}")
    return problems


def _weights(spec: ModelSpec, config: Mapping[str, Any]) -> str | None:
    """The serialized file the archive should carry (none on an ONNX backend)."""
    if spec.serialized_file is None or not backends.carries_weights(config):
        return None
    return spec.serialized_file.name


# --- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit inspect",
        description="Show a .mar's manifest, model config and files, and check it against its "
        "spec. Exit codes: 0 it matches its spec, 1 it does not (or cannot be read), 2 usage.",
    )
    parser.add_argument(
        "mar", metavar="NAME|FILE.mar", help="a model name (model_store/NAME.mar) or a .mar file"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--config-dir", type=Path, metavar="DIR", help="the specs (default: the project's config/)"
    )
    parser.add_argument(
        "--defaults", type=Path, metavar="FILE", help="default: the project's model-config.yml"
    )
    project.add_argument(parser)
    return parser


def archive_path(argument: str, where: project.Project) -> Path:
    """A path when ``argument`` looks like one (ends in ``.mar`` or has a ``/``), else the
    project's ``model_store/<argument>.mar``."""
    if argument.endswith(".mar") or "/" in argument:
        return Path(argument)
    return where.archive(argument)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.mar = Path(args.mar)  # what _fail reports until it is resolved
    with_project = args.project is not None or not str(args.mar).endswith(".mar")
    try:
        where = project.from_args(args, check=with_project)
    except ConfigError as err:
        return _fail(args, f"{parser.prog}: error: {err}", 2)
    args.mar = archive_path(str(args.mar), where)
    config_dir = args.config_dir or where.specs_dir
    defaults_file = args.defaults or where.model_config
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if (why := not_a_file(args.mar)) is not None:
        return _fail(args, f"{parser.prog}: error: {args.mar}: {why}", 2, parser.format_usage())
    try:
        info = read_mar(args.mar)
    except ToolkitError as err:  # the archive cannot be read: it does not match its spec
        return _fail(args, f"{parser.prog}: error: {err}", 1)
    name = str(info.manifest.get("model", {}).get("modelName", ""))
    spec_path = config_dir / f"{name}.yml"
    try:
        if not is_file(spec_path):
            problems = [f"no spec {spec_path} for model '{name}'"]
        else:
            spec = load_spec(spec_path, where.root)
            defaults = read_yaml(defaults_file) if is_file(defaults_file) else {}
            problems = check_against_spec(info, spec, defaults or {}, where.root)
    except ConfigError as err:  # the spec or the defaults are bad input, as archive says (2)
        return _fail(args, f"{parser.prog}: error: {err}", 2)
    except ToolkitError as err:
        return _fail(args, f"{parser.prog}: error: {err}", 1)
    if args.json:
        print(_strict_json(_report(info, problems)))
    else:
        _print(info, problems)
    return 1 if problems else 0


def _fail(args: argparse.Namespace, message: str, code: int, usage: str = "") -> int:
    """A clean error: on stderr, and with --json a JSON object on stdout as well."""
    if args.json:
        print(_strict_json({"file": str(args.mar), "matches_spec": False, "error": message}))
    print(f"{usage}{printable(message)}", file=sys.stderr)
    return code


def _strict_json(report: dict[str, object]) -> str:
    """JSON any parser reads: no NaN or Infinity, string keys only (see ``jsonable``)."""
    return json.dumps(jsonable(report), indent=2, allow_nan=False)


def _report(info: MarInfo, problems: list[str]) -> dict[str, object]:
    return {
        "file": str(info.path),
        "sha256": info.sha256(),
        "manifest": info.manifest,
        "model_config": info.model_config,
        "files": {
            name: {"bytes": entry.size, "sha256": entry.sha256}
            for name, entry in sorted(info.files.items())
        },
        "matches_spec": not problems,
        "problems": problems,
    }


def _print(info: MarInfo, problems: list[str]) -> None:
    """The report as text; every name and key from the archive escaped (no forged lines or
    terminal escapes)."""
    print(printable(f"{info.path}  sha256 {info.sha256()}"))
    print("manifest:")
    print("  " + json.dumps(jsonable(info.manifest), indent=2).replace("\n", "\n  "))
    print("model config:")
    config = jsonable(info.model_config or {})
    for key in sorted(config):
        print(f"  {printable(key)}: {json.dumps(config[key])}")
    print("files:")
    for name, entry in sorted(info.files.items()):
        print(f"  {entry.size:>9}  {entry.sha256[:12]}  {printable(name)}")
    if problems:
        print("does NOT match its spec:")
        print("\n".join(f"  - {printable(p)}" for p in problems))
    else:
        print("matches its spec")


if __name__ == "__main__":
    sys.exit(main())
