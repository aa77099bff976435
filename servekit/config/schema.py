"""Every key TorchServe 0.12 reads from ``config.properties`` and ``model-config.yml``.

One source of truth: the validator (``servekit.config.validate``), the docs table
(``docs/config-keys.md``, written by ``servekit config-docs``) and the specs
(``servekit.config.specs``) all read these tuples. Each key was checked against the
0.12.0 source: ``ConfigManager.java`` (properties), ``ModelConfig.java`` (YAML),
``ModelManager.java``/``ConfigManager.getJsonIntValue`` (the ``models=`` JSON)
and ``ts/model_server.py`` (the launcher's own keys).

    >>> PROPERTIES["job_queue_size"].default
    '100'
    >>> MODEL_CONFIG["batchSize"].kind
    'int'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

# Kinds of value. Properties are text that TorchServe parses; YAML values are typed.
INT = "int"  # Integer.parseInt: digits only, no spaces, no decimals
LONG = "long"
DOUBLE = "double"
BOOL = "bool"  # properties: Boolean.parseBoolean (anything but 'true' is false)
STRING = "string"
ADDRESS = "address"  # http(s)://host[:port] or unix:/path (ConfigManager.ADDRESS_PATTERN)
HOST = "host"  # an IP address or host name (gRPC bind address)
PORT = "port"
REGEX = "regex"
URL_PATTERNS = "url patterns"  # comma-separated regexes, each matched against a whole URL
JSON_MODELS = "json"  # {model: {version: {setting: value}}}
INT_LIST = "list of int"
SECTION = "mapping"  # a YAML mapping

PROPERTIES_FILE = "config.properties"
MODEL_CONFIG_FILE = "model-config.yml"
SPEC_FILE = "config/<model>.yml"
MODELS_JSON = "models= JSON"
TORCHRUN = "torchrun"


@dataclasses.dataclass(frozen=True)
class Key:
    """One setting: its name, kind, default, allowed values and meaning."""

    name: str
    kind: str
    default: str | int | bool | None
    meaning: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: tuple[str, ...] = ()
    internal: bool = False  # set by TorchServe itself; a user value is overwritten or misleads

    def allowed(self) -> str:
        """What a value must look like, in words (for findings and docs)."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        bounds = _bounds(self.minimum, self.maximum)
        noun = {
            INT: "an integer",
            LONG: "an integer",
            DOUBLE: "a number",
            BOOL: "true or false",
            ADDRESS: "http(s)://host[:port] or unix:/path",
            HOST: "an IP address or host name",
            PORT: "a port number",
            REGEX: "a regular expression",
            URL_PATTERNS: "comma-separated regular expressions matched against model URLs",
            JSON_MODELS: 'a JSON object {"model": {"version": {"setting": value}}}',
            INT_LIST: "a list of integers",
            SECTION: "a mapping",
        }.get(self.kind, "a string")
        return f"{noun} {bounds}".strip()


def _bounds(low: int | float | None, high: int | float | None) -> str:
    if low is not None and high is not None:
        return f"in {low}..{high}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return ""


def _index(keys: Iterable[Key]) -> Mapping[str, Key]:
    return {key.name: key for key in keys}


_LOOPBACK_NOTE = "off loopback, turn token authorization on"

PROPERTIES: Mapping[str, Key] = _index(
    [
        # --- addresses and ports
        Key(
            "inference_address",
            ADDRESS,
            "http://127.0.0.1:8080",
            "Bind address of the inference API; " + _LOOPBACK_NOTE,
        ),
        Key(
            "management_address",
            ADDRESS,
            "http://127.0.0.1:8081",
            "Bind address of the management API; " + _LOOPBACK_NOTE,
        ),
        Key(
            "metrics_address",
            ADDRESS,
            "http://127.0.0.1:8082",
            "Bind address of the metrics API (no token authorization)",
        ),
        Key("grpc_inference_address", HOST, "127.0.0.1", "Bind address of the gRPC inference API"),
        Key(
            "grpc_management_address", HOST, "127.0.0.1", "Bind address of the gRPC management API"
        ),
        Key("grpc_inference_port", PORT, "7070", "Port of the gRPC inference API", 1, 65535),
        Key("grpc_management_port", PORT, "7071", "Port of the gRPC management API", 1, 65535),
        Key(
            "grpc_inference_max_connection_age_ms",
            LONG,
            None,
            "Max age of a gRPC inference connection (default: unlimited)",
            1,
        ),
        Key(
            "grpc_management_max_connection_age_ms",
            LONG,
            None,
            "Max age of a gRPC management connection (default: unlimited)",
            1,
        ),
        Key(
            "grpc_inference_max_connection_age_grace_ms",
            LONG,
            None,
            "Grace period after the max connection age (inference)",
            1,
        ),
        Key(
            "grpc_management_max_connection_age_grace_ms",
            LONG,
            None,
            "Grace period after the max connection age (management)",
            1,
        ),
        Key("enable_grpc_ssl", BOOL, "false", "Serve gRPC over TLS"),
        Key(
            "initial_worker_port",
            PORT,
            "9000",
            "First port of the frontend-worker sockets",
            1,
            65535,
        ),
        Key(
            "initial_distribution_port",
            PORT,
            "29500",
            "First port for torchrun distributed workers",
            1,
            65535,
        ),
        # --- security
        Key(
            "disable_token_authorization",
            BOOL,
            "false",
            "Turn token authorization off (it is on by default; keys go to key_file.json)",
        ),
        Key(
            "token_expiration_min",
            DOUBLE,
            "60",
            "Minutes before a management/inference token expires",
            0.001,
        ),
        Key(
            "enable_model_api",
            BOOL,
            "false",
            "Allow register/unregister over the management API (ShellTorch's way in)",
        ),
        Key(
            "allowed_urls",
            URL_PATTERNS,
            "file://.*|http(s)?://.*",
            "Regexes of the URLs models may be loaded from (split on ',')",
        ),
        Key(
            "use_env_allowed_urls",
            BOOL,
            "false",
            "Let TS_ALLOWED_URLS override allowed_urls when enable_envvars_config is on",
        ),
        Key(
            "install_py_dep_per_model",
            BOOL,
            "false",
            "pip install each archive's requirements.txt at load time",
        ),
        Key("blacklist_env_vars", REGEX, "", "Regex of environment variables hidden from workers"),
        Key(
            "enable_envvars_config",
            BOOL,
            "false",
            "Let TS_<KEY> environment variables override these keys",
        ),
        Key("keystore", STRING, None, "Keystore file for HTTPS"),
        Key("keystore_pass", STRING, "changeit", "Keystore password"),
        Key("keystore_type", STRING, "PKCS12", "Keystore type"),
        Key("certificate_file", STRING, None, "PEM certificate for HTTPS (with private_key_file)"),
        Key("private_key_file", STRING, None, "PEM private key for HTTPS"),
        Key("cors_allowed_origin", STRING, None, "CORS Access-Control-Allow-Origin"),
        Key("cors_allowed_methods", STRING, None, "CORS Access-Control-Allow-Methods"),
        Key("cors_allowed_headers", STRING, None, "CORS Access-Control-Allow-Headers"),
        # --- models and workers
        Key("model_store", STRING, None, "Directory of .mar files (--model-store overrides it)"),
        Key(
            "workflow_store", STRING, None, "Directory of workflow archives (default: model_store)"
        ),
        Key(
            "load_models",
            STRING,
            None,
            "Models to load at start: 'all', or a comma list of .mar files or name=url",
        ),
        Key(
            "models",
            JSON_MODELS,
            None,
            "Per-model settings: minWorkers, maxWorkers, batchSize, maxBatchDelay, "
            "responseTimeout, startupTimeout, runtimeType",
        ),
        Key(
            "default_workers_per_model",
            INT,
            "0",
            "Workers per model when nothing else says (0: one per GPU, else per CPU)",
            0,
        ),
        Key(
            "default_response_timeout",
            INT,
            "120",
            "Seconds a batch may take before its worker is restarted",
            1,
        ),
        Key(
            "default_startup_timeout", INT, "120", "Seconds a worker may take to load its model", 1
        ),
        Key(
            "unregister_model_timeout",
            INT,
            "120",
            "Seconds an unregister waits for workers to stop",
            1,
        ),
        Key(
            "job_queue_size",
            INT,
            "100",
            "Per-model queue of waiting requests; when full, requests get 503",
            1,
        ),
        Key("number_of_gpu", INT, "all visible", "Max GPUs to use", 0),
        Key("max_request_size", INT, "6553500", "Largest request body in bytes", 1),
        Key("max_response_size", INT, "6553500", "Largest response body in bytes", 1),
        Key(
            "limit_max_image_pixels", BOOL, "true", "Keep PIL's decompression-bomb limit in workers"
        ),
        Key(
            "decode_input_request",
            BOOL,
            "true",
            "Workers decode JSON and text bodies before the handler sees them",
        ),
        Key("default_service_handler", STRING, None, "Handler used when an archive names none"),
        Key("service_envelope", STRING, None, "Request envelope (json, body, kserve, kservev2)"),
        Key("python", STRING, "python", "Python executable that runs the workers"),
        Key("model_server_home", STRING, None, "TorchServe's installation directory"),
        Key("cpp_log_config", STRING, None, "Log config of the C++ backend"),
        Key("ts_open_inference_protocol", BOOL, "false", "Serve the Open Inference Protocol"),
        Key(
            "ts_header_key_sequence_id",
            STRING,
            "ts_request_sequence_id",
            "Header naming a stateful sequence",
        ),
        Key(
            "ts_header_key_sequence_start",
            STRING,
            "ts_request_sequence_start",
            "Header that starts a sequence",
        ),
        Key(
            "ts_header_key_sequence_end",
            STRING,
            "ts_request_sequence_end",
            "Header that ends a sequence",
        ),
        # --- metrics and logging
        Key(
            "metrics_mode",
            STRING,
            "log",
            "Where metrics go: log files or the Prometheus endpoint",
            choices=("log", "prometheus"),
        ),
        Key("metrics_config", STRING, None, "metrics.yaml declaring the metrics"),
        Key("enable_metrics_api", BOOL, "true", "Serve the metrics API on metrics_address"),
        Key(
            "model_metrics_auto_detect",
            BOOL,
            "false",
            "Accept handler metrics not declared in metrics_config",
        ),
        Key("disable_system_metrics", BOOL, "false", "Stop collecting CPU/memory/GPU metrics"),
        Key("metric_time_interval", INT, "60", "Seconds between system metric samples", 1),
        Key("system_metrics_cmd", STRING, "", "Command that collects system metrics"),
        Key("async_logging", BOOL, "false", "Asynchronous log4j logging"),
        Key("debug", BOOL, "false", "Debug mode: one worker per model"),
        # --- runtime tuning
        Key("number_of_netty_threads", INT, "0", "Frontend I/O threads (0: one per CPU)", 0),
        Key("netty_client_threads", INT, "0", "Frontend-to-worker threads (0: one per CPU)", 0),
        Key("use_native_io", BOOL, "true", "epoll/kqueue and Unix sockets where available"),
        Key("io_ratio", INT, "50", "Netty's I/O time ratio (percent)", 1, 100),
        Key("prefer_direct_buffer", BOOL, "false", "Netty direct buffers"),
        Key("ipex_enable", BOOL, "false", "Intel Extension for PyTorch on CPU"),
        Key("ipex_gpu_enable", BOOL, "false", "Intel Extension for PyTorch on Intel GPUs"),
        Key("cpu_launcher_enable", BOOL, "false", "Start workers through torch's CPU launcher"),
        Key("cpu_launcher_args", STRING, None, "Arguments of the CPU launcher"),
        # --- read by the Python launcher (ts/model_server.py)
        Key("vmargs", STRING, None, "JVM options of the frontend"),
        Key("plugins_path", STRING, None, "Directory of frontend plugin jars"),
        # --- internal
        Key(
            "model_snapshot",
            STRING,
            None,
            "A snapshot's model state (written by TorchServe)",
            internal=True,
        ),
        Key(
            "version", STRING, None, "TorchServe's version (set from ts/version.txt)", internal=True
        ),
        Key("tsConfigFile", STRING, None, "Path of this file (set by TorchServe)", internal=True),
    ]
)

MODELS_JSON_KEYS: Mapping[str, Key] = _index(
    [
        Key("minWorkers", INT, None, "Workers started at load (a value <= 0 is ignored)", 1),
        Key("maxWorkers", INT, None, "Upper bound of workers (a value <= 0 is ignored)", 1),
        Key("batchSize", INT, 1, "Requests per batch (a value <= 0 is ignored)", 1),
        Key("maxBatchDelay", INT, 100, "ms to wait to fill a batch (a value <= 0 is ignored)", 1),
        Key("responseTimeout", INT, 120, "Seconds a batch may take (a value <= 0 is ignored)", 1),
        Key(
            "startupTimeout",
            INT,
            120,
            "Seconds a worker may take to load (a value <= 0 is ignored)",
            1,
        ),
        Key(
            "runtimeType", STRING, "python", "Worker runtime", choices=("python", "python3", "LSP")
        ),
        Key(
            "defaultVersion",
            BOOL,
            None,
            "Snapshot only: this version is the default",
            internal=True,
        ),
        Key("marName", STRING, None, "Snapshot only: the archive's file name", internal=True),
    ]
)

MODEL_CONFIG: Mapping[str, Key] = _index(
    [
        Key(
            "minWorkers",
            INT,
            None,
            "Workers started at load; YAML workers apply only if minWorkers >= 1 "
            "and maxWorkers >= minWorkers",
            1,
        ),
        Key("maxWorkers", INT, None, "Upper bound when scaling", 0),
        Key("batchSize", INT, 1, "Requests aggregated into one handler call", 1),
        Key("maxBatchDelay", INT, 100, "ms the frontend waits to fill a batch", 0),
        Key(
            "responseTimeout",
            INT,
            120,
            "Seconds a batch may take before the worker is restarted",
            1,
        ),
        Key("startupTimeout", INT, 120, "Seconds a worker may take to load the model", 1),
        Key(
            "maxRetryTimeoutInSec",
            INT,
            300,
            "Seconds of failed worker restarts before /ping turns unhealthy",
            0,
        ),
        Key("clientTimeoutInMills", INT, 0, "ms a request may wait in the queue (0: no limit)", 0),
        Key(
            "jobQueueSize",
            INT,
            0,
            "This model's queue size (0: job_queue_size of config.properties)",
            0,
        ),
        Key(
            "useJobTicket",
            BOOL,
            False,
            "Accept a request only when a worker is free (else 503 at once)",
        ),
        Key("deviceType", STRING, None, "Where workers run", choices=("cpu", "gpu")),
        Key("deviceIds", INT_LIST, None, "GPU ids the workers use, round-robin"),
        Key(
            "parallelType",
            STRING,
            None,
            "Model parallelism",
            choices=("pp", "tp", "pptp", "custom"),
        ),
        Key("parallelLevel", INT, 0, "Processes per worker for model parallelism", 0),
        Key("torchrun", SECTION, None, "torchrun settings (nproc-per-node sets parallelLevel)"),
        Key("continuousBatching", BOOL, False, "Continuous batching (LLM-style)"),
        Key("sequenceBatching", BOOL, False, "Batch requests of stateful sequences"),
        Key("sequenceMaxIdleMSec", INT, 0, "ms a sequence may idle before it is closed", 0),
        Key("sequenceTimeoutMSec", INT, 0, "ms a sequence may live", 0),
        Key("maxSequenceJobQueueSize", INT, 1, "Queue size of one sequence", 1),
        Key("maxNumSequence", INT, 1, "Sequences served at once", 1),
        Key("asyncCommunication", BOOL, False, "Asynchronous frontend-worker communication"),
        Key("useVenv", BOOL, False, "A virtualenv per model (with install_py_dep_per_model)"),
        # Sections TorchServe does not read itself: they reach the handler as
        # context.model_yaml_config[...] (ts/ reads handler, pt2, deepspeed, pippy, dali).
        Key(
            "handler",
            SECTION,
            None,
            "Handler options; ours are declared by the handler's options_class",
        ),
        Key("pt2", SECTION, None, "torch.compile settings read by TorchServe's BaseHandler"),
        Key("deepspeed", SECTION, None, "DeepSpeed settings read by ts.handler_utils"),
        Key("pippy", SECTION, None, "PiPPy settings read by ts.handler_utils"),
        Key("dali", SECTION, None, "DALI preprocessing settings read by ts.handler_utils"),
    ]
)

TORCHRUN_KEYS: Mapping[str, Key] = _index(
    [
        Key("nnodes", INT, 1, "Nodes", 1),
        Key("nproc-per-node", INT, 1, "Processes per node; sets parallelLevel", 1),
        Key("rdzv-backend", STRING, "c10d", "Rendezvous backend"),
        Key("rdzv-endpoint", STRING, None, "Rendezvous endpoint"),
        Key("rdzv-conf", STRING, None, "Rendezvous options"),
        Key("monitor-interval", INT, 5, "Seconds between worker checks", 1),
        Key("node-rank", INT, 0, "This node's rank", 0),
        Key("OMP_NUMBER_THREADS", INT, 1, "OpenMP threads per process", 1),
    ]
)

SPEC: Mapping[str, Key] = _index(
    [
        Key(
            "name",
            STRING,
            None,
            "Model name: letters, digits, _ - . (a letter or digit first); must match the "
            "file name",
        ),
        Key("version", STRING, None, "Model version (a string: quote 1.0)"),
        Key("handler", STRING, None, "Handler file, relative to the project (one class per file)"),
        Key("serialized_file", STRING, None, "Weights file shipped in the archive"),
        Key("extra_files", "list of paths", None, "Other files shipped in the archive"),
        Key("model_config", SECTION, None, "Overrides of model-config.yml for this model"),
        Key(
            "handler_options",
            SECTION,
            None,
            "Merged into the handler: section; checked against the handler's options_class",
        ),
    ]
)
SPEC_REQUIRED = ("name", "version", "handler")
# torch-model-archiver's rule for a model name (model_packaging_utils.py, 0.12)
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")

TABLES: Mapping[str, Mapping[str, Key]] = {
    PROPERTIES_FILE: PROPERTIES,
    MODELS_JSON: MODELS_JSON_KEYS,
    MODEL_CONFIG_FILE: MODEL_CONFIG,
    TORCHRUN: TORCHRUN_KEYS,
    SPEC_FILE: SPEC,
}
