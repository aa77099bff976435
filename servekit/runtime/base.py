"""``ToolkitHandler``: the base every toolkit handler subclasses.

It keeps TorchServe's batch contract (one result or one error per request,
always), decodes and validates each request on its own, loads weights with
errors that name the file, warms up, counts, times and describes itself.

A leaf handler only says what differs::

    class IrisHandler(ToolkitHandler[list[float]]):
        def load_model(self) -> torch.nn.Module: ...
        def parse_request(self, payload: Payload) -> list[float]: ...
        def preprocess(self, items: list[list[float]]) -> torch.Tensor: ...
        def postprocess(self, outputs: torch.Tensor) -> list[dict]: ...
        def warmup_items(self, n: int) -> list[list[float]]: ...
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from servekit.runtime import recycle
from servekit.runtime.decoding import DEFAULT_FIELDS, Payload, select_payload
from servekit.runtime.devices import CPU, choose_device, to_device
from servekit.runtime.draining import WorkerDrain
from servekit.runtime.errors import (
    BadRequest,
    InsufficientMemory,
    InternalError,
    ModelLoadError,
    PayloadTooLarge,
    RequestError,
    ServiceUnavailable,
)
from servekit.runtime.options import HandlerOptions
from servekit.runtime.readiness import Readiness
from servekit.runtime.request_ids import (
    ECHO_HEADER,
    HEADER,
    MODEL_VERSION,
    VERSION_HEADER,
    RequestIds,
    request_ids,
)
from servekit.runtime.stats import WorkerStats

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
T = TypeVar("T")
STAGES = ("preprocess", "inference", "postprocess")
HISTOGRAM = MetricTypes.HISTOGRAM
ZEROED_CODES = (200, 400, 413, 500, 503, 507)


class ToolkitHandler(BaseHandler, Generic[ItemT]):
    """Base handler: subclass it and fill in the hooks below."""

    options_class: ClassVar[type[HandlerOptions]] = HandlerOptions
    input_fields: ClassVar[tuple[str, ...]] = DEFAULT_FIELDS
    accepts_empty: ClassVar[bool] = False
    input_schema: ClassVar[dict[str, Any]] = {}
    output_schema: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.options: HandlerOptions = self.options_class()
        self.stats = WorkerStats()
        self.labels: list[str] | None = None
        self.warmup_ms: float | None = None
        self.model_dir = Path(".")
        self.model_name = ""
        self.model_version = ""
        self.batch_size = 1
        self.model_config: dict[str, Any] = {}
        self.warming = False
        self.health = Readiness()
        self.publish_stats = False
        self.device: torch.device = CPU
        self.device_reason = "cpu (not initialized)"
        self.drain: WorkerDrain | None = None

    # ----- lifecycle ---------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        self._read_context(context)
        self.publish_stats = recycle.in_torchserve_worker()
        if self.publish_stats:
            self.drain = WorkerDrain(self.model_name)
            self.drain.watch()
        self._publish(force=True)  # "initializing", while the weights load
        self._zero_metrics(context)
        self.options = self.options_class.from_section(self.model_config.get("handler"))
        self.health = Readiness(self.options.degraded_after_errors, self.options.recheck_seconds)
        if self.options.torch_threads:
            torch.set_num_threads(self.options.torch_threads)
        self._choose_device(context)
        self.model = self._on_device(self.load_model())
        self.labels = self.load_labels()
        if self.options.recycle_on_sigusr1:
            recycle.install(self.model_name)
        if self.options.warmup and self.options.warmup_in_background:
            self.warming = True
            threading.Thread(target=self._warmup, name="warmup", daemon=True).start()
        elif self.options.warmup:
            self._warmup()
        self.initialized = True
        self._publish(force=True)
        logger.info("%s initialized (status %s)", self.model_name, self.status)

    def _read_context(self, context: Any) -> None:
        props = context.system_properties
        self.model_dir = Path(props["model_dir"])
        self.batch_size = int(props.get("batch_size") or 1)
        self.model_name = context.model_name
        manifest = context.manifest or {}
        self.model_version = str(manifest.get("model", {}).get("modelVersion", ""))
        self.model_config = dict(context.model_yaml_config or {})

    def _choose_device(self, context: Any) -> None:
        """``self.device`` from TorchServe's ``gpu_id`` and the model config (``devices``)."""
        cuda = torch.cuda.is_available()
        choice = choose_device(
            context.system_properties,
            self.model_config,
            cuda_available=cuda,
            device_count=torch.cuda.device_count() if cuda else 0,
        )
        self.device, self.device_reason = choice.device, choice.reason
        if choice.fallback:
            logger.warning("%s: serving on %s", self.model_name, choice.reason)
        else:
            logger.info("%s: device %s", self.model_name, choice.reason)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # what allocates on "the current device" too

    def _on_device(self, model: Any) -> Any:
        """A ``torch.nn.Module`` (scripted and exported ones too) moved to ``self.device``."""
        if isinstance(model, torch.nn.Module) and self.device != CPU:
            return model.to(self.device)
        return model

    def _warmup(self) -> None:
        started = time.perf_counter()
        try:
            self._serve_warmup_items()
            self.warmup_ms = round((time.perf_counter() - started) * 1000, 3)
        except Exception as err:
            if not self.warming:
                raise  # blocking warmup: initialize fails, as it should
            logger.exception("%s: background warmup failed", self.model_name)
            self.health.fail(err)
        finally:
            self.warming = False
            if self.initialized:  # a background warmup: tell the exporter it is over
                self._publish(force=True)

    @property
    def status(self) -> str:
        """``initializing``, ``warming``, ``ready``, ``degraded`` (see ``readiness``) or
        ``draining`` (the server is being stopped: ``servekit stop``)."""
        if not self.initialized:
            return "initializing"
        if self.warming:
            return "warming"
        if self.drain is not None and self.drain.marker() is not None:
            return "draining"
        return "degraded" if self.health.degraded else "ready"

    # ----- hooks for subclasses ------------------------------------------------------------
    def load_model(self) -> Any:
        """Build the model from files in ``self.model_dir``; ``None`` for model-less handlers."""
        return None

    def load_labels(self) -> list[str] | None:
        """The class names, where the model has them."""
        return None

    def parse_request(self, payload: Payload) -> ItemT:
        """Validate one request's input; raise ``RequestError`` to fail only that request."""
        raise NotImplementedError

    def preprocess(self, items: list[ItemT]) -> Any:
        """Collate the valid inputs of a batch into the model's input."""
        return items

    def inference(self, batch: Any) -> Any:
        """Run the model on a collated batch (under ``torch.inference_mode``)."""
        return self.model(batch)

    def postprocess(self, outputs: Any) -> list[Any]:
        """One JSON-able result per input, in order."""
        return list(outputs)

    def warmup_items(self, n: int) -> list[ItemT]:
        """``n`` valid inputs for the warmup batch; an empty list skips warmup."""
        return []

    cost_unit: ClassVar[str] = "requests"

    def item_cost(self, item: ItemT) -> int:
        """The work one parsed request asks of the model, in ``cost_unit``s (tokens for text);
        batches hold at most the option ``max_batch_cost`` of it."""
        return 1

    # ----- helpers for subclasses ----------------------------------------------------------
    def artifact(self, name: str) -> Path:
        """Path of a file shipped in the archive; a clear error when it is missing."""
        path = self.model_dir / name
        if not path.is_file():
            shipped = (
                sorted(p.name for p in self.model_dir.iterdir()) if self.model_dir.is_dir() else []
            )
            raise ModelLoadError(
                f"model '{self.model_name}': file '{name}' is missing from the archive "
                f"(it holds: {', '.join(shipped) or 'nothing'}); "
                "add it to the model spec in config/"
            )
        return path

    def to_device(self, obj: T) -> T:
        """``obj`` with its tensors on this worker's device (see ``devices.to_device``)."""
        return to_device(obj, self.device)

    def load_state_dict(self, module: torch.nn.Module, name: str) -> torch.nn.Module:
        """Load weights ``name`` from the archive into ``module``, in eval mode."""
        path = self.artifact(name)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            module.load_state_dict(state)
        except Exception as err:  # torch raises many types for a broken file
            raise ModelLoadError(
                f"model '{self.model_name}': weights file '{name}' is broken or does not fit "
                f"{type(module).__name__}: {err}"
            ) from err
        return module.eval()

    # ----- the TorchServe entry point ------------------------------------------------------
    def handle(self, data: list[Any], context: Any) -> list[Any]:
        started = time.perf_counter()
        if is_describe(data, context):
            if recycle.draining():
                self.stats.leaving = "retire" if recycle.retiring() else "recycle"
                self._publish(force=True)
                recycle.exit_for_recycling(self.model_name)
                self.stats.leaving = None  # a retiring worker not scaled down serves again
                self._publish(force=True)
            self.health.recheck(self._self_test)
            self._publish()  # a recheck may have ended a degraded spell, without traffic
            return [self.describe_handle()]
        if self.drain is None:
            return self._handle(data, context, started)
        self.drain.start_batch()
        try:
            return self._handle(data, context, started)
        finally:
            self.drain.end_batch()

    def _handle(self, data: list[Any], context: Any, started: float) -> list[Any]:
        results: list[Any] = [None] * len(data)
        good: list[int] = []
        items: list[ItemT] = []
        admitted = self._admitted(data, context, results)
        for idx, request in enumerate(data[:admitted]):
            try:
                items.append(self._parse(request, context, idx))
                good.append(idx)
            except RequestError as err:
                results[idx] = self._error(context, idx, err)
        good, items = self._within_budget(good, items, results, context)
        timings = dict.fromkeys(STAGES, 0.0)
        if items:
            outcomes = self._predict_isolating(items, timings)
            for idx, result in zip(good, outcomes, strict=True):
                results[idx] = self._reply(context, idx, result)
        self._echo_client_ids(context, len(data))
        self._name_version(context, len(data))
        statuses = [context.get_response_status(i)[0] for i in range(len(data))]
        self.health.record(statuses, self._self_test)
        errors = sum(1 for code in statuses if code >= 400)
        self.stats.record_batch(len(data), errors, timings)
        self._publish()
        self._emit_metrics(context, statuses, timings, time.perf_counter() - started)
        return results

    def _admitted(self, data: list[Any], context: Any, results: list[Any]) -> int:
        """How many of the batch's requests this worker serves: all, except while its server
        drains and refuses new requests (servekit/runtime/draining.py); the others get a
        503 with ``Retry-After``, and are not counted as failures."""
        if self.drain is None:
            return len(data)
        admitted, retry_after = self.drain.admit(len(data))
        for idx in range(admitted, len(data)):
            err = ServiceUnavailable("the server is shutting down; send this request again")
            context.set_response_header(idx, "Retry-After", str(retry_after))
            results[idx] = self._error(context, idx, err)
        return admitted

    def _publish(self, force: bool = False) -> None:
        """This worker's counters and status for `servekit recycle` and `servekit exporter`;
        a change of status is written at once, counters at most every 0.2 s."""
        if not self.publish_stats:
            return
        status = self.status
        changed = status != self.stats.status
        self.stats.status = status
        self.stats.publish(self.model_name, force=force or changed)

    def _parse(self, request: Any, context: Any, idx: int) -> ItemT:
        """One request's input, validated; whatever goes wrong here is the input's fault.

        ``parse_request`` sees only the client's bytes, so an exception it did not expect
        (a ``RecursionError`` from deep JSON, an ``OverflowError`` from a huge number, a
        decoder's own error type) is still a 400: logged with its stack trace for the
        handler's author, never a 500, never counted against the model's health.
        """
        try:
            return self.parse_request(self._payload(request, context, idx))
        except RequestError:
            raise
        except Exception as err:
            raise BadRequest(
                f"the input could not be read ({type(err).__name__}); "
                "see the model's input_schema (GET /models/{name}?customized=true)",
                unexpected=err,
            ) from None

    def _within_budget(
        self, good: list[int], items: list[ItemT], results: list[Any], context: Any
    ) -> tuple[list[int], list[ItemT]]:
        """The requests the model serves in this batch: at most ``max_batch_cost`` of work.

        A batch that runs past ``responseTimeout`` makes the frontend kill the worker and fail
        every request in it, so valid but costly requests must not add up past the budget:
        one that alone costs more is a 413; the ones after the budget is spent get a 503
        with ``Retry-After``, as when the queue is full, and are not counted as failures.
        """
        budget = self.options.max_batch_cost
        if not budget:
            return good, items
        admitted: tuple[list[int], list[ItemT]] = ([], [])
        spent = 0
        for idx, item in zip(good, items, strict=True):
            cost = self.item_cost(item)
            if cost > budget:
                err: RequestError = PayloadTooLarge(
                    f"this request asks for {cost} {self.cost_unit}; one batch may hold "
                    f"{budget}: split it"
                )
            elif spent + cost > budget:
                err = ServiceUnavailable(
                    f"this batch's budget of {budget} {self.cost_unit} is spent; retry"
                )
                context.set_response_header(idx, "Retry-After", "1")
            else:
                spent += cost
                admitted[0].append(idx)
                admitted[1].append(item)
                continue
            results[idx] = self._error(context, idx, err)
        return admitted

    def _serve_warmup_items(self) -> None:
        """One batch of the handler's own known-good inputs; nothing when it has none."""
        items = self.warmup_items(self.options.warmup_batch_size)
        if items:
            self._predict(items, dict.fromkeys(STAGES, 0.0))

    def _self_test(self) -> BaseException | None:
        """``None`` if the model answers the warmup inputs (or there are none to ask)."""
        try:
            self._serve_warmup_items()
        except Exception as err:
            logger.error("%s: self-test on warmup inputs failed", self.model_name, exc_info=err)
            return err
        return None

    def _payload(self, request: Any, context: Any, idx: int) -> Payload:
        payload = select_payload(request, self.input_fields, allow_empty=self.accepts_empty)
        header = context.get_request_header(idx, payload.field)
        content_type = header.get("content-type", "") if isinstance(header, dict) else ""
        return Payload(payload.value, payload.field, content_type)

    def _predict_isolating(self, items: list[ItemT], timings: dict[str, float]) -> list[Any]:
        """Predict a batch so that only culprits fail: one that fails as a whole is retried
        in halves if it ran out of memory (recursively), else one request at a time.

        A request gets an error only when it fails alone; the worker keeps serving. Retries
        run outside the ``except`` clause: the error's frames hold the failed batch's tensors.
        """
        try:
            return self._predict(items, timings)
        except Exception as err:
            if len(items) == 1:
                return [_without_locals(err)]
            halve = _out_of_memory(err)
            retry = f"in halves of {(len(items) + 1) // 2}" if halve else "one by one"
            logger.warning(
                "%s: batch of %d failed on %s (%r); retrying it %s",
                self.model_name,
                len(items),
                self.device,
                err,
                retry,
            )
        if halve:
            self._free_device_memory()
            half = (len(items) + 1) // 2
            first = self._predict_isolating(items[:half], timings)
            return first + self._predict_isolating(items[half:], timings)
        outcomes: list[Any] = []
        for item in items:
            try:
                outcomes.extend(self._predict([item], timings))
            except Exception as err:
                outcomes.append(_without_locals(err))
        return outcomes

    def _free_device_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _predict(self, items: list[ItemT], timings: dict[str, float]) -> list[Any]:
        """Run the three stages on valid items, adding each stage's milliseconds to ``timings``.

        The model's input goes to ``self.device`` and its output comes back to CPU, so
        ``preprocess`` and ``postprocess`` only ever see CPU tensors; on CPU nothing moves.
        """
        on_device = self.device != CPU
        with _timed("preprocess", timings):
            batch = self.preprocess(items)
        with _timed("inference", timings), torch.inference_mode():
            outputs = self.inference(to_device(batch, self.device) if on_device else batch)
            if on_device:
                outputs = to_device(outputs, CPU)
        with _timed("postprocess", timings):
            results = self.postprocess(outputs)
        if len(results) != len(items):
            raise RuntimeError(
                f"postprocess returned {len(results)} results for {len(items)} inputs"
            )
        return results

    def _reply(self, context: Any, idx: int, result: Any) -> Any:
        if isinstance(result, BaseException):
            return self._error(context, idx, result)
        size = encoded_size(result)
        if size is None:
            # TorchServe would send NaN/Infinity as such (not JSON) or fail the whole batch
            bad = ValueError(f"result is not strict JSON (NaN, Infinity, a type): {result!r:.200}")
            return self._error(context, idx, bad)
        limit = self.options.max_response_bytes
        if size > limit:  # past the frontend's max_response_size the whole worker dies
            too_big = PayloadTooLarge(
                f"the answer to this request would be {size} bytes; the server sends at most "
                f"{limit} (max_response_size): ask for less in one request"
            )
            return self._error(context, idx, too_big)
        context.set_response_content_type(idx, "application/json")
        return result

    def _error(self, context: Any, idx: int, err: BaseException) -> dict[str, Any]:
        """Request ``idx``'s error answer, with its ids, and its one line in the worker log."""
        ids = request_ids(context, idx)
        answer = err if isinstance(err, RequestError) else _server_error(err)
        status = HTTPStatus(answer.status)
        self._log_failure(ids, answer, err)
        context.set_response_status(int(status), status.phrase, idx)
        context.set_response_content_type(idx, "application/json")
        return answer.body(ids)

    def _log_failure(self, ids: RequestIds, answer: RequestError, err: BaseException) -> None:
        """One record per failed request naming its ids, status and reason: a 5xx (and a 400
        for an error ``parse_request`` did not expect) with the stack trace, a 4xx without."""
        line = "%s: %s answered %d %s: %s"
        args = (self.model_name, ids.log_text(), int(answer.status), type(answer).__name__)
        if answer is not err:  # a server error: the client got a generic message
            logger.error(line, *args, _one_line(repr(err)), exc_info=err)
        elif answer.unexpected is not None:
            reason = f"{answer.message} [{type(answer.unexpected).__name__}]"
            logger.warning(line, *args, _one_line(reason), exc_info=answer.unexpected)
        else:
            logger.info(line, *args, _one_line(answer.message))

    def _echo_client_ids(self, context: Any, count: int) -> None:
        """Each request's valid ``X-Request-ID`` back as ``X-Client-Request-ID`` (the frontend
        overwrites an ``x-request-id`` set here with its own); a dropped one is logged on a
        success (a failure's line says it already), with its length only."""
        for idx in range(count):
            ids = request_ids(context, idx)
            if ids.client_request_id is not None:
                context.set_response_header(idx, ECHO_HEADER, ids.client_request_id)
            elif ids.dropped is not None and context.get_response_status(idx)[0] < 400:
                logger.info(
                    "%s: %s: an invalid %s was dropped", self.model_name, ids.log_text(), HEADER
                )

    def _name_version(self, context: Any, count: int) -> None:
        """Every answer says which version of the model gave it (``X-Model-Version``): during
        a rollout (``servekit rollout``) a client can tell the old version's from the new's."""
        if MODEL_VERSION.fullmatch(self.model_version):  # never a header of CR/LF or the like
            for idx in range(count):
                context.set_response_header(idx, VERSION_HEADER, self.model_version)

    def _dims(self, label: str = "ModelName", *extra: Dimension) -> list[Dimension]:
        """A metric's dimensions, fresh each call: TorchServe's metric methods append to the
        list they get. Level is given, else TorchServe labels a metric without a request id
        Level="Error". The servekit_* metrics label the model ``model_name``, like TorchServe's
        ts_* metrics and `servekit exporter`; the older Toolkit* ones keep ``ModelName``. One
        builder for every emission: TorchServe drops an update whose label names differ."""
        return [Dimension(label, self.model_name), Dimension("Level", "Model"), *extra]

    def _zero_metrics(self, context: Any) -> None:
        """``servekit_responses_total`` at 0 for the usual status codes, from the start:
        TorchServe creates a series at its first increment, so without a 0 before it the
        first burst of 500s would be invisible to ``rate()`` and ``increase()``."""
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        for code in ZEROED_CODES:
            labels = self._dims("model_name", Dimension("code", str(code)))
            metrics.add_counter("servekit_responses_total", 0, None, labels)

    def _emit_metrics(
        self, context: Any, statuses: list[int], timings: dict[str, float], seconds: float
    ) -> None:
        """This batch's counts and times, through TorchServe's metrics cache: to
        ``model_metrics.log`` with ``metrics_mode=log``, to ``/metrics`` with ``prometheus``.

        ``servekit_request_seconds`` is a histogram (Prometheus's default buckets, 5 ms to
        10 s, fit a handler's latency in seconds) with one observation per request: the time
        its batch spent in this handler. ``servekit_responses_total`` counts answers by status.
        """
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return

        dims = self._dims
        errors = sum(1 for code in statuses if code >= 400)
        metrics.add_counter("ToolkitRequests", len(statuses), None, dims())
        metrics.add_counter("ToolkitRequestErrors", errors, None, dims())
        for stage, ms in timings.items():
            metrics.add_time(f"Toolkit{stage.title()}Time", round(ms, 3), None, "ms", dims())
        for code, count in sorted(Counter(statuses).items()):
            labels = dims("model_name", Dimension("code", str(code)))
            metrics.add_counter("servekit_responses_total", count, None, labels)
        for _ in statuses:
            labels = dims("model_name")
            metrics.add_time(
                "servekit_request_seconds", round(seconds, 6), None, "s", labels, HISTOGRAM
            )

    # ----- custom metadata -----------------------------------------------------------------
    def describe_handle(self) -> dict[str, Any]:
        """What ``GET /models/{name}?customized=true`` shows as ``customizedMetadata``."""
        cls = type(self)
        described: dict[str, Any] = {
            "status": self.status,
            "failures_in_a_row": self.health.failures_in_a_row,
            "self_test": self.health.as_dict(),
            "model": {"name": self.model_name, "version": self.model_version},
            "handler": f"{cls.__module__}.{cls.__qualname__}",
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "batching": self.batch_settings(),
            "warmup": {
                "enabled": self.options.warmup,
                "ran": self.warmup_ms is not None,
                "ms": self.warmup_ms,
            },
            "options": {"declared": self.options_class.declared(), "values": vars(self.options)},
            "worker": self.stats.as_dict(),
            "torch_threads": torch.get_num_threads(),
            "device": {"name": str(self.device), "reason": self.device_reason},
        }
        if self.labels is not None:
            described["labels"] = self.labels
        return described

    def batch_settings(self) -> dict[str, Any]:
        """Batch settings in force: ``batchSize`` as the frontend sent it, the rest as archived."""
        keys: Sequence[str] = (
            "maxBatchDelay",
            "minWorkers",
            "maxWorkers",
            "responseTimeout",
            "maxRetryTimeoutInSec",
            "jobQueueSize",
        )
        settings = {k: self.model_config[k] for k in keys if k in self.model_config}
        return {"batchSize": self.batch_size, **settings}


def is_describe(data: list[Any], context: Any) -> bool:
    """True for a customized describe (``GET /models/{name}?customized=true``).

    TorchServe sends it as a request with the header ``describe: True``, always alone in
    its batch and with no input at all. A client can send the same header on a
    prediction: that one carries a body (or form fields, or a form content type), so it
    is served as the prediction it is, and its batch keeps one answer per request.
    """
    if len(data) != 1 or data[0] or context.get_request_header(0, "describe") != "True":
        return False
    headers = context.get_all_request_header(0) or {}
    content_type = next(
        (str(v) for k, v in headers.items() if str(k).lower() == "content-type"), ""
    ).lower()
    return not content_type.startswith(("multipart/", "application/x-www-form-urlencoded"))


RESPONSE_OVERHEAD = 1024
"""Bytes of a response that are not its body (status phrase, content type, headers), kept
free under ``max_response_bytes``."""


def encoded_size(result: Any) -> int | None:
    """The bytes TorchServe sends for ``result`` (its worker writes JSON with ``indent=2``),
    plus what the rest of the response may take; ``None`` when ``result`` would not be strict
    JSON (NaN, Infinity, a type ``json`` cannot write). One serialization answers both."""
    if isinstance(result, (bytes, bytearray)):
        size = len(result)
    elif isinstance(result, str):
        size = len(result.encode("utf-8", "surrogatepass"))
    else:
        try:
            size = len(json.dumps(result, indent=2, allow_nan=False).encode("utf-8"))
        except (TypeError, ValueError, RecursionError):
            return None
    return size + RESPONSE_OVERHEAD


LOGGED_REASON_CHARS = 300


def _one_line(text: str) -> str:
    """``text`` safe for one log line: control and non-ASCII characters escaped, bounded."""
    escaped = text[:LOGGED_REASON_CHARS].encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped)
    return escaped if len(text) <= LOGGED_REASON_CHARS else escaped + "..."


def _server_error(err: BaseException) -> RequestError:
    """The generic answer to an error the handler did not expect (507 out of memory, else 500)."""
    return InsufficientMemory() if _out_of_memory(err) else InternalError()


def _without_locals(err: BaseException) -> BaseException:
    """``err`` with its frames' locals dropped (its traceback still prints): a kept error
    must not keep a batch's tensors, device memory above all, alive."""
    traceback.clear_frames(err.__traceback__)
    return err


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.OutOfMemoryError))


@contextmanager
def _timed(stage: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] += (time.perf_counter() - started) * 1000
