"""The service benchmark end to end on a tiny workload: real servers on loopback, a real
worker process running the tiny test engine; the table's shape is checked, never a timing."""

from __future__ import annotations

import importlib.util
import os
import re
import sys

import psutil
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def bench(repo_root):
    spec = importlib.util.spec_from_file_location(
        "service_load", repo_root / "bench" / "service_load.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(bench):
    config = bench.LoadConfig(
        requests=6,
        concurrency=2,
        warmup_requests=1,
        images=2,
        side=32,
        engine="worker_engines:TinyEngine",  # tests/worker_engines.py, cheap on a CPU
        poll_interval_s=0.05,
        job_timeout_s=60,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    report = bench.run(config, env)
    after = {child.pid for child in psutil.Process().children(recursive=True)}
    return report, after - before


def test_the_table_has_every_measurement_with_its_baseline(bench, report):
    report, _ = report
    lines = bench.markdown_table(report.rows).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]

    assert cells[0] == list(bench.TABLE_COLUMNS)
    assert all(re.fullmatch(r"-+:?", cell) for cell in cells[1])
    body = cells[2:]
    assert [row[0] for row in body] == [
        "bare FastAPI upload route, 2 connections",
        "gateway `POST /v1/upscale`, 2 connections",
        "bare engine in-process (`Upscaler`)",
        "HTTP + queue + 1 worker (`megasr worker`)",
    ]
    assert [row[1] for row in body] == ["6", "6", "2", "2"]
    assert all(len(row) == len(bench.TABLE_COLUMNS) for row in body)
    assert [row[3].split()[1] for row in body] == ["submits/s"] * 2 + ["images/min"] * 2
    assert all(float(value) > 0 for row in body for value in (row[2], row[3].split()[0]))
    assert all(float(row[4]) <= float(row[5]) <= float(row[6]) for row in body)
    # CPU ms per item: a number, or a bound where a tiny run stayed under one clock tick
    cpu_cells = [row[7] for row in body]
    assert all(re.fullmatch(r"(< )?\d+\.\d", cell) for cell in cpu_cells), cpu_cells
    assert all(float(cell.removeprefix("< ")) > 0 for cell in cpu_cells)
    assert [row[8:] for row in body[::2]] == [["baseline", "baseline"]] * 2
    assert all(re.fullmatch(r"\d+\.\d\dx", row[8]) for row in body[1::2])
    assert all(re.fullmatch(r"\d+\.\d\dx|n/a \(under one CPU tick\)", row[9]) for row in body[1::2])


def test_cpu_time_under_one_clock_tick_gives_a_bound_and_no_ratio(bench):
    tick = bench.CPU_TICK_S
    bare = bench.Row("bare", 4, 0.01, 0.0, "submits/s", (0.01,) * 4)
    served = bench.Row("served", 4, 0.02, 3 * tick, "submits/s", (0.02,) * 4, baseline=bare)
    measured = bench.Row("bare", 4, 0.01, tick, "submits/s", (0.01,) * 4)
    against_measured = bench.Row("served", 4, 0.02, 3 * tick, "submits/s", (0.02,) * 4, measured)

    assert served.cpu_overhead is None and served.overhead == pytest.approx(2.0)
    assert against_measured.cpu_overhead == pytest.approx(3.0)
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in bench.markdown_table([bare, served, measured, against_measured]).splitlines()
    ][2:]
    assert cells[0][7] == f"< {tick / 4 * 1000:.1f}"
    assert cells[1][7:] == [f"{3 * tick / 4 * 1000:.1f}", "2.00x", "n/a (under one CPU tick)"]
    assert cells[3][7:] == [f"{3 * tick / 4 * 1000:.1f}", "2.00x", "3.00x"]


def test_every_latency_is_measured_and_the_notes_say_what_ran(report):
    report, _ = report
    assert [len(row.latencies_s) for row in report.rows] == [6, 6, 2, 2]
    assert report.rows[1].baseline is report.rows[0]
    assert report.rows[3].baseline is report.rows[2]
    calls = re.search(r"the worker ran (\d+) tiles in (\d+) engine calls", report.notes[-1])
    assert calls is not None, report.notes
    assert int(calls.group(1)) >= 2 and int(calls.group(2)) >= 1  # a 32-px tile per image


def test_redis_the_servers_and_the_worker_are_gone_afterwards(report):
    _, started_and_left = report
    assert started_and_left == set()
