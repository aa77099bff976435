"""``servekit bench-observe``'s pure parts: the order of turns, the spread and ratios of rounds,
the summary, the printout, the client's count and the arguments. No server here
(tests/e2e/test_bench_observe.py runs the command)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from servekit import cli
from servekit.bench import loadgen, observe
from servekit.errors import ToolkitError

ROOT = Path(__file__).resolve().parent.parent.parent


def run(
    round_: int, configuration: str, concurrency: int, rps: float, p95: float
) -> dict[str, Any]:
    return {
        "round": round_,
        "configuration": configuration,
        "concurrency": concurrency,
        "goodput_rps": rps,
        "p50_ms": p95 / 2,
        "p95_ms": p95,
        "errors": 1 if configuration == "B" else 0,
    }


def test_turns_alternate_which_configuration_goes_first() -> None:
    assert observe.order(1) == [(1, "A"), (1, "B")]
    assert observe.order(3) == [(1, "A"), (1, "B"), (2, "B"), (2, "A"), (3, "A"), (3, "B")]
    for rounds in range(1, 6):
        turns = observe.order(rounds)
        assert sorted(turns) == [(n, k) for n in range(1, rounds + 1) for k in "AB"]


def test_spread_is_median_range_and_range_as_a_share_of_the_median() -> None:
    assert observe.spread([100.0, 90.0, 110.0]) == {
        "median": 100.0,
        "min": 90.0,
        "max": 110.0,
        "range_pct": 20.0,
        "rounds": [100.0, 90.0, 110.0],
    }
    assert observe.spread([4.0, 6.0])["median"] == 5.0  # the one percentile: interpolated
    assert observe.spread([0.0, 0.0])["range_pct"] is None


def test_ratio_of_medians_per_round_and_overlap() -> None:
    apart = observe.ratio([100.0, 104.0, 98.0], [90.0, 91.0, 93.0])
    assert apart["of_medians"] == round(91 / 100, 3)
    assert apart["per_round"] == [0.9, 0.875, round(93 / 98, 3)]
    assert (apart["per_round_min"], apart["per_round_max"]) == (0.875, round(93 / 98, 3))
    assert apart["ranges_overlap"] is False
    noisy = observe.ratio([100.0, 90.0, 110.0], [95.0, 105.0, 99.0])
    assert noisy["ranges_overlap"] is True
    touching = observe.ratio([100.0, 110.0], [90.0, 100.0])
    assert touching["ranges_overlap"] is True
    assert observe.ratio([100.0], [50.0])["ranges_overlap"] is None  # no range from one round


def test_ratio_skips_a_round_where_a_measured_nothing() -> None:
    figure = observe.ratio([0.0, 100.0], [50.0, 90.0])
    assert figure["per_round"] == [0.9]
    assert observe.ratio([0.0], [5.0])["of_medians"] is None


def test_summary_per_concurrency_in_the_order_measured() -> None:
    runs = [
        run(1, "A", 32, 100.0, 300.0),
        run(1, "A", 1, 20.0, 50.0),
        run(1, "B", 32, 95.0, 310.0),
        run(1, "B", 1, 19.0, 52.0),
        run(2, "B", 32, 96.0, 320.0),
        run(2, "B", 1, 19.5, 49.5),
        run(2, "A", 32, 102.0, 290.0),
        run(2, "A", 1, 21.0, 49.0),
    ]
    c32, c1 = observe.summary(runs)
    assert (c32["concurrency"], c1["concurrency"]) == (32, 1)
    assert c32["A"]["goodput_rps"]["rounds"] == [100.0, 102.0]  # by round, not by time
    assert c32["B"]["goodput_rps"]["rounds"] == [95.0, 96.0]
    assert c32["A"]["p95_ms"]["median"] == 295.0
    assert (c32["A"]["errors"], c32["B"]["errors"]) == (0, 2)
    throughput = c32["b_over_a"]["throughput"]
    assert throughput["of_medians"] == round(95.5 / 101, 3)
    assert throughput["per_round"] == [0.95, round(96 / 102, 3)]
    assert throughput["ranges_overlap"] is False
    assert c32["b_over_a"]["p95"]["per_round"] == [round(310 / 300, 3), round(320 / 290, 3)]
    assert c1["b_over_a"]["p95"]["ranges_overlap"] is True


def test_summary_refuses_rounds_that_do_not_pair() -> None:
    runs = [run(1, "A", 8, 10.0, 5.0), run(1, "B", 8, 10.0, 5.0), run(2, "A", 8, 10.0, 5.0)]
    with pytest.raises(ToolkitError, match="concurrency 8: A and B were not measured"):
        observe.summary(runs)


def document(runs: list[dict[str, Any]], exact: bool) -> dict[str, Any]:
    turns = [
        {"round": 1, "prometheus_delta": 500, "client_answered": 500 if exact else 499},
    ]
    return {
        "model": "minilm",
        "summary": observe.summary(runs),
        "prometheus_check": {"exact": exact, "turns": turns},
    }


def test_render_states_ratios_their_range_and_the_prometheus_check() -> None:
    runs = [run(1, "A", 32, 100.0, 300.0), run(1, "B", 32, 90.0, 330.0)]
    runs += [run(2, "B", 32, 91.0, 335.0), run(2, "A", 32, 102.0, 295.0)]
    text = observe.render(document(runs, exact=True))
    assert "concurrency 32:" in text
    assert "B/A throughput 0.896 (per round 0.892-0.900; ranges apart)" in text
    assert "B/A p95        1.118 (per round 1.100-1.136; ranges apart)" in text
    assert "requests answered: yes; per B turn (Prometheus, client): (500, 500)" in text
    assert "answered: NO" in observe.render(document(runs, exact=False))
    one = observe.render(document(runs[:2], exact=True))
    assert "B/A throughput 0.900 (per round 0.900-0.900; one round: no range)" in one


def test_counted_keeps_the_last_report_and_forwards_each() -> None:
    seen: list[loadgen.Progress] = []
    counted = observe.Counted(seen.append)
    counted(loadgen.Progress(elapsed=0.5, done=10, errors=0, in_flight=4))
    counted(loadgen.Progress(elapsed=1.0, done=25, errors=2, in_flight=0))
    assert (counted.answered, counted.no_answer) == (23, 2)
    assert len(seen) == 2


def test_run_record_counts_every_answer_that_is_not_2xx_as_an_error() -> None:
    target = loadgen.Target.post("http://127.0.0.1:9/predictions/m", [b"{}"])
    load = loadgen.Load(concurrency=4, duration=2.0, warmup=1.0)
    samples = [
        loadgen.Sample(0.0, 0.5, 200),  # in the warmup: left out
        loadgen.Sample(1.0, 1.2, 200),
        loadgen.Sample(1.0, 1.4, 200),
        loadgen.Sample(1.1, 1.5, 503),
        loadgen.Sample(1.2, 2.0, None, "ClientConnectionError"),
    ]
    extra = {"missed": 0, "max_in_flight": 4, "client_cpu_s": 0.1, "client_wall_s": 2.0,
             "client_cpu_pct": 5.0}  # fmt: skip
    result = loadgen.tally(samples, 1.0, target=target, load=load, extra=extra)
    record = observe.run_record(2, "B", result)
    assert record["round"] == 2 and record["configuration"] == "B"
    assert record["concurrency"] == 4 and record["requests"] == 4
    assert (record["errors"], record["count_503"], record["no_answer"]) == (2, 1, 1)
    assert record["p50_ms"] == 300.0 and record["goodput_rps"] == 2.0


def parse(*argv: str) -> argparse.Namespace:
    return observe.parse_args(["--project", str(ROOT), *argv])


def test_defaults_are_make_bench_settings_at_32_and_1() -> None:
    args = parse()
    assert args.model == "minilm" and args.rounds == 3
    assert args.concurrency == [32, 1]
    assert (args.duration, args.warmup, args.server_warmup) == (10.0, 2.0, 8.0)
    assert (args.scrape_interval, args.exporter_interval) == (1.0, 2.0)
    assert args.out == ROOT / "docs" / "bench" / "observe-cost.json"
    assert args.config == ROOT / "config.properties"
    assert args.command == f"servekit bench-observe --project {ROOT}"
    loads = observe.loads_of(args)
    assert [(x.concurrency, x.duration, x.warmup) for x in loads] == [(32, 10, 2), (1, 10, 2)]


def test_given_values_are_kept() -> None:
    args = parse("--model", "iris", "--rounds", "1", "-c", "4", "--duration", "2",
                 "--warmup", "0.5", "--server-warmup", "0", "--out", "x.json")  # fmt: skip
    assert (args.model, args.rounds, args.concurrency) == ("iris", 1, [4])
    assert args.server_warmup == 0 and args.out == Path("x.json")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "0"], "--rounds is 0; it must be from 1 to 20"),
        (["--server-warmup", "-1"], "--server-warmup is -1 s; it must be >= 0"),
        (["--scrape-interval", "0"], "--scrape-interval is 0 s; it must be > 0"),
        (["--exporter-interval", "-2"], "--exporter-interval is -2 s; it must be > 0"),
        (["--duration", "2", "--warmup", "2"], "warmup (2 s) is not shorter than the duration"),
        (["-c", "0"], "concurrency is 0"),
        (["--model", "nosuch"], "no built-in payload for model 'nosuch'"),
    ],
)
def test_bad_arguments_are_usage_errors_that_name_them(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == cli.USAGE
    assert message in capsys.readouterr().err


def test_the_command_is_registered_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.COMMANDS["bench-observe"].module == "servekit.bench.observe"
    assert cli.main(["bench-observe", "--help"]) == cli.OK
    out = capsys.readouterr().out
    assert out.startswith("usage: servekit bench-observe") and "--scrape-interval" in out
