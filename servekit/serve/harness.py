"""Run a TorchServe handler in-process, through TorchServe's own worker code.

No Java, no sockets: a request is encoded in the frontend's wire format,
decoded by ``ts.protocol.otf_message_handler``, served by ``ts.service.Service``
(loaded by ``ts.model_loader.TsModelLoader`` exactly as a worker loads it) and
the wire response is decoded back, per-request status included.

    >>> from servekit.serve.harness import LocalModel, Request
    >>> with LocalModel.from_mar("model_store/iris.mar") as iris:     # doctest: +SKIP
    ...     replies = iris.predict([Request.json({"features": [5.1, 3.5, 1.4, 0.2]}),
    ...                             Request.json({"features": "oops"})])
    >>> [r.status for r in replies]                                    # doctest: +SKIP
    [200, 400]
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import struct
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from servekit.errors import ToolkitError

HANDLER_PACKAGE = "handlers"


class ModelLoadFailed(ToolkitError):
    """The handler's ``initialize`` (or its import) failed, as it would in a worker."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One inference request as the frontend forwards it: parameters and headers."""

    parameters: tuple[tuple[str, str, bytes], ...]
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def raw(cls, body: bytes, content_type: str = "application/octet-stream") -> Request:
        return cls((("body", content_type, body),), (("Content-Type", content_type),))

    @classmethod
    def json(cls, value: Any) -> Request:
        return cls.raw(json.dumps(value).encode(), "application/json")

    @classmethod
    def text(cls, value: str, content_type: str = "text/plain") -> Request:
        return cls.raw(value.encode(), content_type)

    @classmethod
    def form(cls, **fields: bytes | str) -> Request:
        """A multipart form: ``bytes`` fields as files, ``str`` fields as text."""
        params = tuple(
            (name, "text/plain", value.encode())
            if isinstance(value, str)
            else (name, "application/octet-stream", value)
            for name, value in fields.items()
        )
        return cls(params, (("Content-Type", "multipart/form-data"),))


@dataclasses.dataclass(frozen=True)
class Reply:
    """What the frontend would send back for one request."""

    status: int
    body: bytes
    content_type: str = ""
    phrase: str = ""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


class LocalModel:
    """A model directory (an unpacked ``.mar``) loaded by TorchServe's worker code."""

    def __init__(
        self,
        model_dir: Path,
        batch_size: int | None = None,
        cleanup: Path | None = None,
        gpu_id: int | None = None,
    ) -> None:
        """``gpu_id`` is what the frontend would assign the worker (``None``: no GPU)."""
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
        from ts.model_loader import TsModelLoader

        self.model_dir = Path(model_dir)
        self._cleanup = cleanup
        manifest = json.loads((self.model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        model = manifest["model"]
        self.name: str = model["modelName"]
        config = self._yaml_config(model)
        self.batch_size = batch_size or int(config.get("batchSize", 1))
        metrics = MetricsCacheYamlImpl(config_file_path=_metrics_config())
        metrics.initialize_cache()
        self._forget_handler_modules(model["handler"])
        sys.path.insert(0, str(self.model_dir))  # a worker has the model dir on PYTHONPATH
        try:
            self.service = TsModelLoader().load(
                self.name,
                str(self.model_dir),
                model["handler"],
                gpu_id,
                self.batch_size,
                None,
                True,
                metrics,
            )
        except Exception as err:  # the worker would log it and report a failed load
            forget_modules(self.model_dir)  # a failed load leaves no module of its own behind
            raise ModelLoadFailed(f"{self.name}: {type(err).__name__}: {err}") from err
        finally:
            sys.path.remove(str(self.model_dir))
        self.service.set_cl_socket(None)

    @classmethod
    def from_mar(
        cls, mar: str | Path, batch_size: int | None = None, gpu_id: int | None = None
    ) -> LocalModel:
        """Unpack ``mar`` to a temporary directory (removed by ``close``) and load it."""
        unpacked = Path(tempfile.mkdtemp(prefix=f"{Path(mar).stem}-"))
        try:
            with zipfile.ZipFile(mar) as archive:
                archive.extractall(unpacked)
            return cls(unpacked, batch_size, cleanup=unpacked, gpu_id=gpu_id)
        except BaseException:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise

    def predict(self, requests: Sequence[Request]) -> list[Reply]:
        """Serve one batch, as one worker call; one reply per request, in order."""
        if not requests:
            raise ValueError("a batch holds at least one request")
        from ts.protocol.otf_message_handler import retrieve_msg

        _, batch = retrieve_msg(_Wire(encode_batch(requests)))
        return decode_response(self.service.predict(batch))

    @property
    def handler(self) -> Any:
        """The handler object the worker code built (its ``handle``'s instance)."""
        return self.service._entry_point.__self__

    def describe(self) -> dict[str, Any]:
        """The handler's custom metadata, as ``?customized=true`` shows it.

        The frontend sends the describe as a request with no input at all, alone in its
        batch, with the management request's headers and ``describe: True``.
        """
        request = Request((), (("describe", "True"),))
        reply = self.predict([request])[0]
        if reply.status != 200:
            raise RuntimeError(f"describe failed with {reply.status}: {reply.body!r}")
        described = reply.json()
        if not isinstance(described, dict):
            raise RuntimeError(f"describe returned {type(described).__name__}, not an object")
        return described

    def close(self) -> None:
        """Forget the modules imported from this model's directory, then remove it if ours.

        Left in ``sys.modules``, an archived ``handlers`` package would shadow the repo's and
        point at a deleted directory: a later ``import handlers.x`` would fail.
        """
        forget_modules(self.model_dir)
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _yaml_config(self, model: dict[str, Any]) -> dict[str, Any]:
        name = model.get("configFile")
        if not name:
            return {}
        return dict(yaml.safe_load((self.model_dir / name).read_text()) or {})

    @staticmethod
    def _forget_handler_modules(handler: str) -> None:
        """Drop cached handler modules so this model imports its own archived copies."""
        entry = Path(handler.split(":", 1)[0]).stem
        for module in list(sys.modules):
            if module in (entry, HANDLER_PACKAGE) or module.startswith(HANDLER_PACKAGE + "."):
                del sys.modules[module]


def forget_modules(model_dir: Path) -> None:
    """Drop from ``sys.modules`` every module imported from ``model_dir``."""
    root = model_dir.resolve()
    for name, module in list(sys.modules.items()):
        location = getattr(module, "__file__", None)
        if location and Path(location).resolve().is_relative_to(root):
            del sys.modules[name]


class _Wire:
    """The read side of a socket, over bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def recv(self, size: int) -> bytes:
        return self._data.read(size)


def _pack(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def encode_batch(requests: Sequence[Request]) -> bytes:
    """Encode a predict command the way the Java frontend does."""
    out = bytearray(b"I")
    for request in requests:
        out += _pack(uuid.uuid4().hex.encode())
        for name, value in request.headers:
            out += _pack(name.encode()) + _pack(value.encode())
        out += struct.pack("!i", -1)
        for name, content_type, body in request.parameters:
            out += _pack(name.encode()) + _pack(content_type.encode()) + _pack(body)
        out += struct.pack("!i", -1)
    out += struct.pack("!i", -1)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def int(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def bytes(self) -> bytes:
        size = self.int()
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value


def decode_response(data: bytes | bytearray) -> list[Reply]:
    """Decode a worker's predict response into the replies the frontend would send."""
    reader = _Reader(bytes(data))
    code = reader.int()
    message = reader.bytes().decode()
    replies = []
    while (size := reader.int()) != -1:
        reader.pos += size  # request id
        content_type = reader.bytes().decode()
        status = reader.int()
        phrase = reader.bytes().decode()
        headers = {reader.bytes().decode(): reader.bytes().decode() for _ in range(reader.int())}
        body = reader.bytes()
        if code != 200:  # the frontend answers every job with the batch-level error
            status, content_type = code, "application/json"
            body = json.dumps({"code": code, "type": "WorkerError", "message": message}).encode()
        replies.append(Reply(status, body, content_type, phrase, headers))
    return replies


def _metrics_config() -> str:
    import ts

    return str(Path(ts.__file__).parent / "configs" / "metrics.yaml")
