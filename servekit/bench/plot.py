"""PNG plots of load-generator results: a sweep (throughput and latency vs concurrency or
rate), or one run's latency histogram. matplotlib's Figure without pyplot: no global state,
no display; ``savefig`` renders the PNG with Agg."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from servekit.bench.loadgen import LoadResult


def _load_axis(result: LoadResult) -> float:
    return float(result.concurrency if result.concurrency is not None else result.rate or 0)


def plot_sweep(results: Sequence[LoadResult], title: str, path: Path) -> None:
    """Throughput (left) and p50/p95/p99 latency (right) against the offered load."""
    xs = [_load_axis(r) for r in results]
    label = "concurrency (requests in flight)" if results[0].mode == "closed" else "rate (req/s)"
    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    left.plot(xs, [r.goodput_rps for r in results], "o-", label="2xx req/s")
    for x, r in zip(xs, results, strict=True):
        left.annotate(
            f"{r.goodput_rps:.0f}\nclient {r.client_cpu_pct:.0f}% CPU",
            (x, r.goodput_rps),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    left.set(xlabel=label, ylabel="throughput (req/s)", title="throughput")
    left.set_ylim(bottom=0, top=max(r.goodput_rps for r in results) * 1.3 or 1)
    for name in ("p50", "p95", "p99"):
        right.plot(xs, [getattr(r.latency_ms, name) for r in results], "o-", label=name)
    right.set(xlabel=label, ylabel="latency (ms, 2xx)", title="latency")
    right.set_ylim(bottom=0)
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left")
        if len(xs) > 2 and max(xs) / max(min(xs), 1) >= 16:
            axis.set_xscale("log", base=2)
            axis.set_xticks(xs, [f"{x:g}" for x in xs])
    _save(fig, title, path)


def plot_histogram(result: LoadResult, title: str, path: Path) -> None:
    """One run: the distribution of 2xx latencies with p50/p95/p99 marked."""
    fig = Figure(figsize=(8, 4.5))
    axis = fig.subplots()
    axis.hist(result.latencies_ms or [0.0], bins=50, color="tab:blue", alpha=0.8)
    for name, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        value = getattr(result.latency_ms, name)
        axis.axvline(value, color="black", linestyle=style, label=f"{name} {value:.1f} ms")
    axis.set(xlabel="latency (ms, 2xx)", ylabel="requests")
    axis.legend()
    axis.grid(alpha=0.3)
    _save(
        fig,
        f"{title}\n{result.goodput_rps:.1f} req/s, client {result.client_cpu_pct:.0f}% CPU",
        path,
    )


def _save(fig: Figure, title: str, path: Path) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def plot_tuning(document: dict[str, Any], path: Path) -> None:
    """``servekit tune``'s run: best-so-far against time (climb and grid), and one map per
    worker count of each setting's score (grid if run, else the climb's), climb steps numbered."""
    space = document["space"]
    workers = space["workers"]
    fig = Figure(figsize=(5 + 4 * len(workers), 4.5))
    axes = fig.subplots(1, 1 + len(workers), squeeze=False)[0]
    runs = [(name, document[name]) for name in ("climb", "grid") if name in document]
    for name, run in runs:
        xs, ys, best = [0.0], [0.0], 0.0
        for trial in run["trials"]:
            best = max(best, trial["score_rps"])
            xs.append(trial["started_s"] + trial["seconds"])
            ys.append(best)
        axes[0].step(xs, ys, where="post", label=f"{name}: {len(run['trials'])} trials")
    if "grid" in document:
        top = document["grid"]["best"]["score_rps"]
        axes[0].axhline(0.95 * top, color="grey", linestyle=":", label="95 % of the grid's best")
    axes[0].set(xlabel="seconds", ylabel="best req/s so far", title="search progress")
    axes[0].grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    shown = document["grid" if "grid" in document else "climb"]["trials"]
    scores = {tuple(t["setting"].values()): t["score_rps"] for t in shown if not t["retrial"]}
    order: dict[tuple[Any, ...], int] = {}
    for n, t in enumerate(document["climb"]["trials"], 1):
        order.setdefault(tuple(t["setting"].values()), n)
    top = max(scores.values(), default=1.0) or 1.0
    for axis, w in zip(axes[1:], workers, strict=True):
        grid = [
            [scores.get((b, d, w), float("nan")) for d in space["delays_ms"]]
            for b in space["batch_sizes"]
        ]
        axis.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for i, b in enumerate(space["batch_sizes"]):
            for j, d in enumerate(space["delays_ms"]):
                value = scores.get((b, d, w))
                text = "" if value is None else f"{value:.0f}"
                if (b, d, w) in order:
                    text += f"\n#{order[(b, d, w)]}"
                axis.text(j, i, text, ha="center", va="center", fontsize=7, color="white")
        axis.set_xticks(range(len(space["delays_ms"])), [str(d) for d in space["delays_ms"]])
        axis.set_yticks(range(len(space["batch_sizes"])), [str(b) for b in space["batch_sizes"]])
        axis.set(xlabel="maxBatchDelay (ms)", ylabel="batchSize", title=f"{w} worker(s): req/s")
    objective = document["objective"]["p95_ms"]
    _save(
        fig, f"{document['model']}: best req/s with p95 <= {objective:g} ms (#n: climb order)", path
    )
