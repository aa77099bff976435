"""Find batchSize, maxBatchDelay and workers that give the most throughput under a p95 objective.

    servekit tune --model minilm --p95 100            # climb, write config/minilm.yml
    servekit tune --model minilm --p95 100 --grid     # also the full grid, to compare
    servekit tune --model iris --p95 50 --batch-sizes 1,4,16 --no-write
    servekit tune --model tiny --payload body.json     # a model with no built-in payload
    servekit tune --model minilm --backend onnxruntime-int8 --no-write   # one backend's best

It starts its own TorchServe from the project's config.properties (loopback, free ports, own
temp dir; the model API switched on there only), registers the model's archive once per setting and
ramps the concurrency of the same client as ``servekit bench`` (servekit.bench.loadgen). A
setting's score is its goodput (2xx/s) where its p95 reaches the objective: the best level
that meets it with no errors, interpolated towards the next level when that one misses on p95
alone; see servekit/bench/search.py for the search. With a grid (``--grid`` or ``--grid-from``) the
climb's and the grid's winners are then measured side by side, alternating, and their means
compared: the grid's best single reading is the luckiest of 48. The winner is written
under ``model_config:`` in config/<model>.yml (``servekit archive`` then bakes it in), unless
``--no-write``. ``--backend B`` tunes the model served on another backend (its archive built
as ``servekit archive`` would, gate included, by servekit.bench.backend_archives); its winner is
written only when the spec already asks for that backend.

Exit codes: 0 a setting met the objective, 1 none did (nothing written) or the run failed,
2 bad arguments (a missing project or archive included), 3 a management API did not answer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from servekit.bench import command
from servekit.bench import payloads as bench_payloads
from servekit.bench import search as tuner
from servekit.bench.backend_archives import archive_for, backend_of, private_copy
from servekit.bench.machine import machine
from servekit.bench.plot import plot_tuning
from servekit.bench.trials import ServedTrials
from servekit.cli import FAILED, OK
from servekit.config.spec_edit import write_sections
from servekit.errors import ToolkitError
from servekit.runtime.backend_names import BACKENDS, EAGER
from servekit.serve.processes import exit_on_sigterm
from servekit.serve.settings import Setting, archived_setting, threads_per_worker


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected integers separated by commas"
        ) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command.parser("tune", __doc__)
    parser.add_argument("--model", required=True, help="archive model_store/MODEL.mar")
    command.add_payload_arguments(parser)
    parser.add_argument("--p95", type=float, default=100.0, help="objective: p95 in ms (100)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="serve the model on this backend (default: the one its spec asks for)",
    )
    parser.add_argument("--batch-sizes", type=int_list, default=(1, 2, 4, 8, 16, 32))
    parser.add_argument("--delays", type=int_list, default=(5, 10, 20, 50), help="ms")
    parser.add_argument("--workers", type=int_list, default=(1, 2))
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--level-seconds", type=float, default=3.0, help="measured per level")
    parser.add_argument("--warmup", type=float, default=0.5, help="s left out of each level")
    parser.add_argument(
        "--setup-warmup", type=float, default=1.0, help="s of load after each registration (1)"
    )
    parser.add_argument(
        "--server-warmup", type=float, default=8.0, help="more s on a fresh server (8)"
    )
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--grid", action="store_true", help="also run the full grid, compare")
    grid.add_argument(
        "--grid-from",
        type=Path,
        help="compare with the grid of an earlier --grid run (its JSON; same objective, space)",
    )
    parser.add_argument(
        "--judge-rounds",
        type=int,
        default=3,
        help="with a grid: measure the climb's and the grid's winners this many times each, "
        "alternating, and compare their means (3; 0: no head-to-head)",
    )
    parser.add_argument(
        "--config", type=Path, help="config.properties to serve with (default: the project's)"
    )
    parser.add_argument("--spec", type=Path, help="spec to write (default config/MODEL.yml)")
    parser.add_argument("--no-write", action="store_true", help="do not write the spec")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default: the project's docs/bench/tune-MODEL.json)"
    )
    parser.add_argument("--plot", type=Path, help="PNG (default: next to --out)")
    args = parser.parse_args(argv)
    try:
        args.space = tuner.Space(args.batch_sizes, args.delays, args.workers)
        args.objective = tuner.Objective(args.p95, args.max_concurrency)
    except ToolkitError as err:
        parser.error(str(err))
    if args.level_seconds <= 0 or min(args.warmup, args.setup_warmup, args.server_warmup) < 0:
        parser.error("--level-seconds must be > 0 and the warmups >= 0")
    if args.judge_rounds < 0:
        parser.error(f"--judge-rounds is {args.judge_rounds}; give 0 or more")
    args.project = command.project_of(args)
    args.config = args.config or args.project.properties
    args.spec = args.spec or args.project.spec(args.model)
    args.spec_backend = backend_of(args.spec) if args.spec.is_file() else EAGER
    args.backend = args.backend or args.spec_backend
    args.out = args.out or args.project.root / "docs" / "bench" / f"tune-{args.model}.json"
    args.plot = args.plot or args.out.with_suffix(".png")
    args.command = command.line("tune", argv)
    return args


def announce(name: str) -> Callable[[tuner.Trial], None]:
    def show(trial: tuner.Trial) -> None:
        best = trial.best
        found = (
            f"{trial.score:7.1f} req/s (best level c={best.concurrency}, p95 {best.p95_ms:.0f} ms)"
            if best
            else "   none meets the objective"
        )
        levels = " ".join(
            f"c{lv.concurrency}:{lv.goodput_rps:.0f}/{lv.p95_ms:.0f}ms" for lv in trial.levels
        )
        again = " again" if trial.retrial else ""
        print(
            f"{name} [{trial.started_s:6.1f} s] {trial.setting.label + again:<20} {found}  "
            f"({levels})",
            flush=True,
        )

    return show


def search_summary(search: tuner.Search, seconds: float) -> dict[str, Any]:
    best = search.best
    summary = best.to_dict() | {"mean_score_rps": search.mean_score(best.setting)} if best else None
    return {
        "seconds": round(seconds, 1),
        "trials": [t.to_dict() for t in search.trials],
        "best": summary,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    command.archive_of(args.project, args.model)
    served = archive_for(args.project, args.model, args.backend)
    payload = bench_payloads.choose(args.model, args.payload, args.content_type)
    start = archived_setting(args.project.root, args.model)
    if start not in set(args.space.settings()):
        start = args.space.middle()
    document: dict[str, Any] = {
        "command": args.command,
        "model": args.model,
        "backend": args.backend,
        "payload": payload.description,
        "objective": {"p95_ms": args.p95, "max_concurrency": args.max_concurrency},
        "space": {
            "batch_sizes": list(args.batch_sizes),
            "delays_ms": list(args.delays),
            "workers": list(args.workers),
            "settings": len(args.space),
        },
        "level_seconds": args.level_seconds,
        "warmups_s": {
            "level": args.warmup,
            "after_registration": args.setup_warmup,
            "fresh_server": args.server_warmup,
        },
        "machine": machine(),
        "started_from": start.label,
    }
    with tempfile.TemporaryDirectory(prefix="tune-") as workdir:
        served = private_copy(served, Path(workdir) / "store")
        measure = ServedTrials(
            args.config,
            Path(workdir),
            served.name,
            payload.bodies,
            payload.content_type,
            args.level_seconds,
            args.warmup,
            args.setup_warmup,
            args.server_warmup,
            model_store=served.store,
        )
        try:
            climb = tuner.Search(measure, args.objective, on_trial=announce("climb"))
            tuner.hill_climb(climb, args.space, start)
            climb.recorded_seconds = climb.elapsed  # the climb's time stops here
            document["climb"] = search_summary(climb, climb.elapsed)
            if args.grid:
                measure.close()  # the grid starts from scratch, as the climb did
                full = tuner.Search(measure, args.objective, on_trial=announce("grid "))
                tuner.grid(full, args.space)
                document["grid"] = search_summary(full, full.elapsed)
                document["comparison"] = compare(climb, full)
            elif args.grid_from:
                earlier = recorded_grid(args.grid_from, document)
                full = tuner.Search.from_record(earlier["grid"], args.objective)
                document["grid"] = earlier["grid"] | {"from": str(args.grid_from.name)}
                document["grid_command"] = earlier["command"]
                document["comparison"] = compare(climb, full)
            if "comparison" in document and args.judge_rounds:
                judge = tuner.Search(measure, args.objective, on_trial=announce("judge"))
                document["comparison"]["head_to_head"] = head_to_head(
                    judge, climb, full, args.judge_rounds
                )
        finally:
            measure.close()
    return document


def recorded_grid(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    """An earlier run's JSON with a grid of the same objective and space as this run."""
    try:
        earlier: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ToolkitError(f"--grid-from {path}: cannot read it ({err})") from None
    if "grid" not in earlier:
        raise ToolkitError(f"--grid-from {path}: it holds no grid (run with --grid)")
    for key in ("model", "objective", "space"):
        if earlier.get(key) != document[key]:
            raise ToolkitError(
                f"--grid-from {path}: its {key} is {earlier.get(key)}, this run's {document[key]}"
            )
    if earlier.get("backend", EAGER) != document["backend"]:  # older runs: eager only
        raise ToolkitError(
            f"--grid-from {path}: its backend is {earlier.get('backend', EAGER)}, "
            f"this run's {document['backend']}"
        )
    return earlier


def compare(climb: tuner.Search, full: tuner.Search) -> dict[str, Any]:
    """How close the climb came to the grid's best, and in what share of the grid's time."""
    climb_best, grid_best = climb.best, full.best
    assert climb_best is not None and grid_best is not None
    picked, top = climb.mean_score(climb_best.setting), grid_best.score
    same = full.mean_score(climb_best.setting)
    return {
        "climb_best": climb_best.setting.label,
        "climb_best_rps": round(picked, 2),
        "grid_best": grid_best.setting.label,
        "grid_best_rps": top,
        "grid_rps_of_climb_best": same,
        "ratio_climb_to_grid": round(picked / top, 3) if top else None,
        "ratio_grid_measure_of_climb_pick": round(same / top, 3) if top else None,
        "trials": [len(climb.trials), len(full.trials)],
        "time_ratio_climb_to_grid": round(climb.elapsed / full.elapsed, 3),
    }


def head_to_head(
    judge: tuner.Search, climb: tuner.Search, full: tuner.Search, rounds: int
) -> dict[str, Any]:
    """The two winners measured side by side, ``rounds`` times each, alternating."""
    mine, theirs = climb.best, full.best
    assert mine is not None and theirs is not None
    starts = {t.setting: t.best.concurrency if t.best else 1 for t in (mine, theirs)}
    means = tuner.head_to_head(judge, starts, rounds)
    picked, top = means[mine.setting], means[theirs.setting]
    return {
        "rounds": rounds,
        "climb_best_rps": round(picked, 2),
        "grid_best_rps": round(top, 2),
        "ratio_climb_to_grid": round(picked / top, 3) if top else None,
        "seconds": round(judge.elapsed, 1),
        "trials": [t.to_dict() for t in judge.trials],
    }


def report(document: dict[str, Any], args: argparse.Namespace) -> int:
    best = document["climb"]["best"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")
    plot_tuning(document, args.plot)
    print(f"wrote {args.plot}")
    if "comparison" in document:
        c = document["comparison"]
        print(
            f"climb: {c['climb_best']} {c['climb_best_rps']:.1f} req/s in {c['trials'][0]} trials; "
            f"grid: {c['grid_best']} {c['grid_best_rps']:.1f} req/s in {c['trials'][1]} trials; "
            f"climb/grid throughput {c['ratio_climb_to_grid']:.3f}, "
            f"time {c['time_ratio_climb_to_grid']:.3f}"
        )
        if "head_to_head" in c:
            h = c["head_to_head"]
            print(
                f"side by side, {h['rounds']} runs each: climb's pick {h['climb_best_rps']:.1f} "
                f"req/s, grid's pick {h['grid_best_rps']:.1f} req/s: "
                f"climb/grid {h['ratio_climb_to_grid']:.3f}"
            )
    if best is None or best["mean_score_rps"] <= 0:
        print(
            f"servekit tune: no setting met p95 <= {args.p95:g} ms; nothing written",
            file=sys.stderr,
        )
        return FAILED
    winner = Setting(**best["setting"])
    print(
        f"best: {winner.label} {best['mean_score_rps']:.1f} req/s (mean of its trials); last at "
        "concurrency "
        f"{best['best']['concurrency']}, p95 {best['best']['p95_ms']:.1f} ms"
    )
    if not args.no_write and args.backend != args.spec_backend:
        print(
            f"not written: {args.spec} serves backend {args.spec_backend}, this run tuned "
            f"{args.backend} (set handler_options.backend: {args.backend} there to ship it)"
        )
    elif not args.no_write:
        note = tuned_note(document, args.p95)
        # Several workers share the cores, as they did here; one worker gets torch's own
        # default back (0), not the share an earlier tuning for several workers wrote.
        threads = threads_per_worker(winner.workers) if winner.workers > 1 else 0
        sections = {
            "model_config": winner.model_config(),
            "handler_options": {"torch_threads": threads},
        }
        write_sections(args.spec, sections, note)
        print(f"wrote {sections} into {args.spec}")
    return OK


def tuned_note(document: dict[str, Any], p95: float) -> str:
    """The comment the tuner writes beside each value: when, how, on how many cores, and what
    the winner served there, so a spec says what its settings were tuned for."""
    best = document["climb"]["best"]
    return (
        f"tuned {datetime.date.today()} by `{document['command']}` on "
        f"{document['machine']['cpus']} cores: {best['mean_score_rps']:.0f} req/s at p95 "
        f"{best['best']['p95_ms']:.0f} ms (objective p95 <= {p95:g} ms)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    document = run(args)
    return report(document, args)
