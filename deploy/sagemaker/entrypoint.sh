#!/usr/bin/env bash
# SageMaker entrypoint: SageMaker starts the container as `docker run IMAGE serve`.
#
# Serves one model on 0.0.0.0:${SAGEMAKER_BIND_TO_PORT:-8080}: GET /ping and POST /invocations,
# which TorchServe routes to the only registered model (it reads no SageMaker header). The
# container's config.properties is written here at start from the project's config, changing
# only the inference address (off loopback, token auth stays off: SageMaker's network isolation
# is the boundary), management/metrics ports (still on 127.0.0.1), model store and model list.
#
# Environment (defaults in brackets):
#   SAGEMAKER_MODEL         the model to serve, <name>.mar in the model store [iris]
#   SAGEMAKER_BIND_TO_PORT  inference port, set by SageMaker [8080]
#   SERVEKIT_BIND_HOST      inference bind address [0.0.0.0]: a host name or IP address ([v6]);
#                           anything else (a newline, a backslash, $$) is refused, as are ports
#                           outside 1-65535 and model store paths with such characters
#   SERVEKIT_MANAGEMENT_PORT, SERVEKIT_METRICS_PORT   loopback-only ports [8081, 8082]
#   SERVEKIT_HOME           the project (config.properties, model_store/) [this script's ../..]
#   SERVEKIT_CONFIG         the config to start from [$SERVEKIT_HOME/config.properties]
#   SERVEKIT_MODEL_STORE    directory of .mar files [$SERVEKIT_HOME/model_store]; set it to
#                           /opt/ml/model to serve the archive SageMaker unpacks from ModelDataUrl
#   SERVEKIT_WORKDIR        TorchServe's working directory: written config, logs/ [a new private
#                           ${TMPDIR:-/tmp}/servekit.XXXXXX]; one given must be a directory of
#                           this user, not a symlink, not group- or world-writable (created 0700)
#   TMPDIR                  TorchServe's pid file and unpacked models [/tmp]
#   SERVEKIT_DRAIN_ANNOUNCE  seconds the handlers report `draining` after SIGTERM before new
#                           requests get 503 + Retry-After [2]
#   SERVEKIT_DRAIN_TIMEOUT  the longest the whole drain on SIGTERM takes (announce included)
#                           before TorchServe is stopped anyway [20]; the container needs that
#                           plus TorchServe's own stop (3-4 s here, at most 30 s) before it is
#                           killed: raise both where the platform waits longer (docker stop -t)
#
# SIGTERM (what tini forwards) drains the server before it stops: `servekit run` runs TorchServe
# in a process group of its own and, on the signal, fails readiness, refuses new requests with
# 503 + Retry-After, answers every accepted one, then stops TorchServe (docs/operations.md).
set -euo pipefail

usage() {
    echo "usage: $0 [serve]   (SageMaker passes 'serve'; configure with SAGEMAKER_* / SERVEKIT_* env vars)" >&2
    exit 2
}

# SageMaker appends `serve`; nothing else is accepted, so a typo cannot start something else.
if [[ $# -gt 1 || ( $# -eq 1 && "$1" != "serve" ) ]]; then
    usage
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${SERVEKIT_HOME:-$(cd "$here/../.." && pwd)}"
config="${SERVEKIT_CONFIG:-$home/config.properties}"
store="${SERVEKIT_MODEL_STORE:-$home/model_store}"
workdir="${SERVEKIT_WORKDIR:-}"
model="${SAGEMAKER_MODEL:-iris}"
port="${SAGEMAKER_BIND_TO_PORT:-8080}"
host="${SERVEKIT_BIND_HOST:-0.0.0.0}"
management_port="${SERVEKIT_MANAGEMENT_PORT:-8081}"
metrics_port="${SERVEKIT_METRICS_PORT:-8082}"
announce="${SERVEKIT_DRAIN_ANNOUNCE:-2}"
drain_timeout="${SERVEKIT_DRAIN_TIMEOUT:-20}"

fail() {
    echo "entrypoint: $*" >&2
    exit 1
}

[[ -f "$config" ]] || fail "config $config not found; set SERVEKIT_CONFIG or SERVEKIT_HOME"
[[ "$model" =~ ^[A-Za-z0-9_-]+$ ]] || fail "SAGEMAKER_MODEL='$model' is not a model name (letters, digits, _ and -)"
if [[ ! -f "$store/$model.mar" ]]; then
    available="$(cd "$store" 2>/dev/null && ls -- *.mar 2>/dev/null | sed 's/[.]mar$//' | paste -sd " " -)"
    fail "SAGEMAKER_MODEL='$model': no $model.mar in $store; available: ${available:-none} (run 'make archive', or set SERVEKIT_MODEL_STORE)"
fi
for value in "$port" "$management_port" "$metrics_port"; do
    [[ "$value" =~ ^[0-9]{1,5}$ ]] && ((10#$value >= 1 && 10#$value <= 65535)) \
        || fail "port '$value' is not a number from 1 to 65535"
done
# Every value below becomes a line of the generated config.properties: a newline, a backslash
# (a Java properties escape or line continuation) or $$ (an env reference) in one of them could
# add or change keys such as enable_model_api. Accept host names and IP addresses only.
[[ "$host" =~ ^([A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])$ ]] \
    || fail "SERVEKIT_BIND_HOST=$(printf '%q' "$host") is not a host name or IP address (letters, digits, '.', '-', or [IPv6])"
[[ "$store" =~ ^[A-Za-z0-9._/@+-]+$ ]] \
    || fail "SERVEKIT_MODEL_STORE=$(printf '%q' "$store") has characters a config line cannot hold safely (use letters, digits and . _ / @ + -)"

for value in "$announce" "$drain_timeout"; do
    [[ "$value" =~ ^[0-9]{1,5}([.][0-9]{1,3})?$ ]] \
        || fail "drain seconds '$value' is not a number from 0 to 86400 (SERVEKIT_DRAIN_ANNOUNCE, SERVEKIT_DRAIN_TIMEOUT)"
done
torchserve="$(command -v torchserve)" || fail "torchserve is not on PATH ($PATH)"
servekit="$(command -v servekit)" || fail "servekit is not on PATH ($PATH)"

mkdir -p "${TMPDIR:-/tmp}"
# The generated config decides what TorchServe serves: it is written only into a directory
# nobody else can write to (a predictable name in a shared /tmp could be someone's symlink).
if [[ -z "$workdir" ]]; then
    workdir="$(mktemp -d "${TMPDIR:-/tmp}/servekit.XXXXXX")"
else
    [[ -e "$workdir" || -L "$workdir" ]] || mkdir -p -m 700 "$workdir"
    [[ ! -L "$workdir" && -d "$workdir" ]] \
        || fail "SERVEKIT_WORKDIR=$(printf '%q' "$workdir") is not a directory (or is a symlink)"
    [[ -O "$workdir" ]] || fail "SERVEKIT_WORKDIR=$(printf '%q' "$workdir") is not owned by this user ($(id -un))"
    [[ -z "$(find "$workdir" -maxdepth 0 -perm /022)" ]] \
        || fail "SERVEKIT_WORKDIR=$(printf '%q' "$workdir") is group- or world-writable; use a private directory (chmod 700)"
fi
store="$(cd "$store" && pwd)"
[[ "$store" =~ ^[A-Za-z0-9._/@+-]+$ ]] \
    || fail "the model store's path $(printf '%q' "$store") has characters a config line cannot hold safely"

# Rewrite only these keys of the project's config (appended if missing); comments stay.
generated="$(mktemp "$workdir/.config.properties.XXXXXX")"
overrides="$(printf '%s\n' \
    "inference_address=http://$host:$port" \
    "management_address=http://127.0.0.1:$management_port" \
    "metrics_address=http://127.0.0.1:$metrics_port" \
    "model_store=$store" \
    "load_models=$model.mar")"
awk -v overrides="$overrides" '
    BEGIN {
        n = split(overrides, lines, "\n")
        for (i = 1; i <= n; i++) { key = substr(lines[i], 1, index(lines[i], "=") - 1); value[key] = lines[i]; order[i] = key }
    }
    {
        key = $0; sub(/[ \t]*=.*/, "", key); sub(/^[ \t]+/, "", key)
        if ($0 !~ /^[ \t]*[#!]/ && index($0, "=") && (key in value)) { print value[key]; done[key] = 1 } else { print }
    }
    END { for (i = 1; i <= n; i++) if (!(order[i] in done)) print value[order[i]] }
' "$config" >"$generated"
# rename, not write: it replaces whatever config.properties was (even a symlink), never follows it
mv -fT "$generated" "$workdir/config.properties"

cd "$workdir"
echo "entrypoint: serving $model on $host:$port (/ping, /invocations); config $workdir/config.properties" >&2
# exec: `servekit run` replaces this shell, so the container's init (tini) signals it directly;
# it drains TorchServe (its child, in a group of its own) on SIGTERM before stopping it.
# The project's log4j2.xml, by absolute path: config.properties names it relative to $home.
log_config=()
[[ -f "$home/config/log4j2.xml" ]] && log_config=(--log-config "$home/config/log4j2.xml")
exec "$servekit" run --announce "$announce" --timeout "$drain_timeout" -- \
    "$torchserve" --start --foreground --ncs \
    --ts-config "$workdir/config.properties" --model-store "$store" "${log_config[@]}"
