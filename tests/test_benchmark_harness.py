"""The pure parts of the benchmark harness (benchmarks/harness): no brokers, no processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from harness import cli, report
from harness.records import verdict_of
from harness.scenarios import REGISTRY, needs_amqp_perf
from harness.scenarios.base import count_label, size_label


def _run(key: str, broker: str, consumed: float, verdict: str = "OK", **extra) -> dict:
    """A run record as results.json holds it (the fields the report reads)."""
    run = {
        "scenario": key,
        "broker": broker,
        "round": 1,
        "cmd": f"amqp-perf {key}",
        "exit_code": 0,
        "stderr_tail": "",
        "profiled": False,
        "duration": 2.0,
        "rss_peak_sampled_mb": 50.0,
        "perf": {
            "ok": True,
            "verdict": verdict,
            "published_rate": consumed,
            "confirmed_rate": consumed,
            "consumed_rate": consumed,
            "latency_us": {"count": 10, "p50": 200.0, "p99": 1500.0},
            "cpu": {"pids_pct": {"broker": 90.0}, "other_pct": 3.0},
        },
    }
    run.update(extra)
    return run


def test_registry_has_every_scenario_in_order() -> None:
    assert list(REGISTRY) == list("abcdefghijklmn")
    assert {k for k, sc in REGISTRY.items() if sc.run is not None} == {"h", "i", "j"}
    assert REGISTRY["c"].persistent and not REGISTRY["a"].persistent
    assert REGISTRY["b"].confirms and REGISTRY["i"].confirms and not REGISTRY["j"].confirms
    assert {k for k, sc in REGISTRY.items() if sc.latency} == {"g", "h"}


def test_needs_amqp_perf_only_for_perf_scenarios() -> None:
    assert not needs_amqp_perf(["h", "j"])
    assert not needs_amqp_perf(["i"])
    assert needs_amqp_perf(["h", "a"])
    assert needs_amqp_perf(["n"])


@pytest.mark.parametrize(
    ("n", "label"), [(1000, "1000"), (50_000, "50k"), (1_000_000, "1M"), (300, "300")]
)
def test_count_label(n: int, label: str) -> None:
    assert count_label(n) == label


@pytest.mark.parametrize(("n", "label"), [(16, "16 B"), (1024, "1 KB"), (2**20, "1 MB")])
def test_size_label(n: int, label: str) -> None:
    assert size_label(n) == label


def test_descriptions_come_from_the_sizes_asked_for() -> None:
    args, _, _ = cli.parse_args([])
    assert REGISTRY["h"].describe(args).startswith("1000 idle connections")
    assert "a 50k x 16 B burst" in REGISTRY["h"].describe(args)
    assert REGISTRY["i"].describe(args).startswith("1M x 1 KB persistent backlog")
    assert REGISTRY["j"].describe(args).startswith("Celery: 10k no-op tasks")
    args, _, _ = cli.parse_args(
        ["--h-connections", "20", "--h-messages", "500", "--i-messages", "300", "--j-tasks", "30"]
    )
    assert REGISTRY["h"].describe(args).startswith("20 idle connections")
    assert "a 500 x 16 B burst" in REGISTRY["h"].describe(args)
    assert "20 conns" in REGISTRY["h"].method(args)
    assert REGISTRY["i"].describe(args).startswith("300 x 1 KB")
    assert "Celery: 30 no-op tasks" in REGISTRY["j"].describe(args)


def test_quick_sets_its_defaults_and_explicit_options_win() -> None:
    args, selected, brokers = cli.parse_args(["--quick"])
    assert selected == ["a", "b", "c", "e", "m", "n"]
    assert brokers == ["leveret", "rabbitmq"]
    assert (args.duration, args.rounds) == (5.0, 1)
    args, selected, brokers = cli.parse_args(["--quick", "--brokers", "leveret", "--duration", "2"])
    assert brokers == ["leveret"] and args.duration == 2.0
    args, selected, _ = cli.parse_args([])
    assert selected == list(REGISTRY) and args.duration == 10 and not args.quick


def test_unknown_scenario_is_an_error() -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--scenarios", "a,z"])


def test_verdict_of() -> None:
    assert verdict_of(_run("a", "leveret", 100)) == "OK"
    assert verdict_of(_run("a", "leveret", 100, exit_code=2)) == "OK (exit 2)"
    dead = _run("a", "leveret", 100, leveret_alive_after=False, leveret_exit_code=-9)
    assert verdict_of(dead) == "OK; Leveret died (exit -9)"


def test_render_table_from_runs() -> None:
    args, _, _ = cli.parse_args(["--h-connections", "20"])
    results = [
        _run("b", "leveret", 30_000),
        _run("b", "rabbitmq", 15_000),
        _run("g", "leveret", 10_000),
        _run("g", "rabbitmq", 10_000),
    ]
    lines = report.render_table(args, results, ["b", "g"]).splitlines()
    assert len(lines) == 2 + 4
    assert all(ln.count("|") == 16 for ln in lines)
    lv_b = lines[2].split(" | ")
    assert lv_b[:3] == ["| b", "1p/1c 16 B manual ack, prefetch 100, confirm 100", "Leveret"]
    assert lv_b[-2:] == ["2.00", "n/a |"]  # the consumed/s ratio; b has no p99 ratio
    assert lines[3].split(" | ")[2] == "RabbitMQ"
    assert lines[4].split(" | ")[-1] == "1.00 |"  # g: the p99 ratio


def test_no_ratio_when_leveret_failed() -> None:
    args, _, _ = cli.parse_args([])
    results = [_run("a", "leveret", 30_000, verdict="INCOMPLETE"), _run("a", "rabbitmq", 1)]
    row = report.render_table(args, results, ["a"]).splitlines()[2]
    assert row.split(" | ")[-2] == "n/a"


def test_quick_ratio_summary() -> None:
    args, _, _ = cli.parse_args(["--quick"])
    results = [_run("a", "leveret", 30_000), _run("a", "rabbitmq", 15_000)]
    table = report.render_ratio_summary(args, results, ["a"]).splitlines()
    assert table[2].startswith("| a | 1p/1c 16 B autoack | 30,000 | 15,000 | **2.00** |")


def test_report_renders_a_json_fixture() -> None:
    """A whole report from run records shaped like results.json, h's detail table included."""
    args, selected, _ = cli.parse_args(["--scenarios", "a,h", "--h-connections", "20"])
    h = _run("h", "leveret", 5000, cmd="run.py built-in scenario h (...)")
    h["custom"] = {"connections_opened": 20, "rss_before_kb": 40_960, "rss_idle_kb": 41_984}
    results = [_run("a", "leveret", 60_000), _run("a", "rabbitmq", 30_000), h]
    text = report.render_report(
        args,
        results,
        selected,
        startups=[{"tag": "a-r1", "startup_s": 0.5, "idle_rss_mb": 40.0}],
        source={"mode": "working tree", "commit": "abc", "dirty": []},
        versions={"leveret": "0.1.0", "rabbitmq": None, "python": "3.11", "amqp_perf": None},
        started="2026-01-01T00:00:00",
        machine={"nproc": 2, "cpu_model": "cpu", "ram": "1 GiB RAM"},
    )
    assert "amqp-perf not used" in text
    assert "| h | 20 idle connections" in text
    assert "### h: idle connections, then a burst" in text
    assert "| Leveret | 1 | 20 |" in text
    assert "## Runs that were not clean" not in text
