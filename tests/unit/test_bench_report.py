"""`make bench`'s report (bench/report.py, bench/run.py, bench/common.py's
figures): rendering from CONTRACT15 figures and series, no benchmark run."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from bench import report
from bench.common import figure, goal_met, ratios
from bench.run import CLUSTER, MODULES, Module, last_json_object, run_module
from tests.helpers import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def fig(name: str, value: float, unit: str = "x", **kw) -> dict:
    return figure(name, value, unit, **kw)


def results(**modules: dict) -> dict:
    return {"started": "2026-11-27 10:00 UTC", "finished": "2026-11-27 10:20 UTC", "duration_s": 1200.0,
            "quick": False, "machine": {"cpu": "Test CPU @ 2.0GHz", "cores": 2, "kernel": "6.1.0-test",
                                        "memory_gib": 3.8},
            "modules": modules}


def sample() -> dict:
    return results(
        tcp_throughput={"status": "ok", "seconds": 50.0, "output": {"figures": [
            fig("TCP, cilium / veth", 0.97, goal=">= 0.95x veth", baseline="veth", rounds=[0.95, 0.99],
                absolute="cilium 9.1 Gbit/s (8.8-9.3) | veth 9.4"),
            fig("TCP, cilium / bridge", 1.17, baseline="bridge", rounds=[1.1, 1.2]),
        ]}},
        endpoint_setup={"status": "ok", "seconds": 30.0, "output": {
            "figures": [fig("endpoint set-up p99, 10 at once", 61.0, "ms", goal="<= 50 ms", rounds=[40, 70])],
            "series": {"setup_vs_concurrency": {"title": "set-up", "xlabel": "at once", "ylabel": "ms",
                                                "x": [1, 10], "lines": {"p50": [3, 9], "p99": [8, 61]}}}}},
        rr={"status": "missing", "error": "bench/rr.py is not in this tree"},
        l7_proxy={"status": "failed", "seconds": 12.0, "error": "exit 1: boom"},
    )


def test_goal_met_is_computed_from_the_number_and_the_goal_text():
    assert goal_met(4.2, "<= 5 ms") is True
    assert goal_met(5.01, "<= 5 ms") is False
    assert goal_met(0.94, ">= 0.95x veth") is False
    assert goal_met(0.95, ">= 0.95x veth") is True
    assert goal_met(3.0, None) is None
    with pytest.raises(ValueError, match="expected"):
        goal_met(1.0, "fast enough")


def test_a_ratio_figure_carries_its_baseline_and_the_rounds_spread():
    f = figure("docker run, cilium / bridge", 1.0421, "x", goal="<= 1.0x bridge", baseline="bridge",
               rounds=ratios([1.1, 1.0, 0.9], [1.0, 1.0, 1.0]))
    assert (f["value"], f["ratio"], f["met"], f["min"], f["max"]) == (1.042, 1.042, False, 0.9, 1.1)
    plain = figure("cold compile", 812.34, "ms", digits=1)
    assert (plain["ratio"], plain["met"], plain["min"]) == (None, None, None)


def test_table_has_a_row_per_figure_and_a_line_per_module_without_figures():
    text = report.table(sample())
    rows = [line for line in text.splitlines() if line.startswith("| tcp") or line.startswith("| endpoint")]
    assert len(rows) == 3
    assert rows[0].split(" | ")[1:6] == ["TCP, cilium / veth", "0.97x", "0.95-0.99", ">= 0.95x veth", "yes"]
    assert "cilium 9.1 Gbit/s (8.8-9.3) \\| veth 9.4" in rows[0]   # a pipe in a cell is escaped
    assert rows[2].split(" | ")[2:6] == ["61.0 ms", "40.0-70.0", "<= 50 ms", "**no**"]
    assert "- `rr`: not run: bench/rr.py is not in this tree" in text
    assert "- `l7_proxy`: FAILED after 12 s: exit 1: boom" in text


def test_summary_names_every_missed_goal():
    assert report.summary(sample()) == "1 of 2 goals met: missed endpoint set-up p99, 10 at once 61.0 ms (goal <= 50 ms)"


def test_write_gives_results_table_and_png_charts(tmp_path):
    paths = report.write(sample(), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == sample()
    assert (tmp_path / "table.md").read_text().startswith("| benchmark | figure |")
    assert paths["chart_error"] is None
    names = sorted(p.name for p in paths["charts"])
    assert names == ["endpoint-setup-setup-vs-concurrency.png", "ratios.png"]
    for p in paths["charts"]:
        assert p.read_bytes().startswith(PNG) and p.stat().st_size > 5000


def test_no_ratio_figures_no_ratio_chart(tmp_path):
    res = results(x={"status": "ok", "output": {"figures": [fig("cold compile", 800, "ms")]}})
    assert report.ratio_chart(res, tmp_path / "ratios.png") is None
    assert not (tmp_path / "ratios.png").exists()


def test_a_series_line_without_a_point_per_x_is_refused(tmp_path):
    with pytest.raises(ValueError, match="line 'cilium' has 2 points for 3 x values"):
        report.line_chart({"title": "t", "x": [0, 1, 2], "lines": {"cilium": [1, 2]}}, tmp_path / "c.png")


def test_readme_block_between_the_markers_is_replaced_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n")
    chart = tmp_path / "ratios.png"
    chart.write_bytes(PNG)
    report.publish(sample(), [chart], readme, chart_dir=tmp_path / "docs" / "bench")
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n" + report.BEGIN) and text.endswith(report.END + "\n\nafter\n")
    assert "old table" not in text
    assert "on Test CPU @ 2.0GHz, 2 cores, 3.8 GiB RAM, Linux 6.1.0-test." in text
    assert "![ratios](docs/bench/ratios.png)" in text
    assert (tmp_path / "docs" / "bench" / "ratios.png").read_bytes() == PNG
    assert "| tcp_throughput | TCP, cilium / veth | 0.97x |" in text
    report.publish(sample(), [], readme, chart_dir=tmp_path / "docs" / "bench")   # a second run: one block still
    assert readme.read_text().count(report.BEGIN) == 1
    assert not (tmp_path / "docs" / "bench" / "ratios.png").exists()


def test_readme_without_markers_is_a_clear_error():
    with pytest.raises(ValueError, match="no benchmark markers"):
        report.update_readme("# no markers\n", "x")


def test_machine_comes_from_proc(tmp_path):
    (tmp_path / "sys" / "kernel").mkdir(parents=True)
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Fake Xeon 9\n\nprocessor\t: 1\n"
                                      "model name\t: Fake Xeon 9\n")
    (tmp_path / "sys" / "kernel" / "osrelease").write_text("6.1.0-99-amd64\n")
    (tmp_path / "meminfo").write_text("MemTotal:        4030000 kB\nMemFree: 1 kB\n")
    m = report.machine(str(tmp_path))
    assert m == {"cpu": "Fake Xeon 9", "cores": 2, "kernel": "6.1.0-99-amd64", "memory_gib": 3.8}
    assert report.machine_line(m) == "Fake Xeon 9, 2 cores, 3.8 GiB RAM, Linux 6.1.0-99-amd64"


def test_the_last_json_object_wins_over_progress_lines():
    out = 'progress\n{"rules": 1000}\n{"rules": 4000}\n{\n  "imports": [{"rules": 1000}],\n  "figures": []\n}\n'
    assert last_json_object(out) == {"imports": [{"rules": 1000}], "figures": []}
    assert last_json_object("a table, no JSON {not json\n") is None


def test_a_module_not_in_the_tree_is_reported_not_fatal(tmp_path):
    res = run_module(Module("rr", "no_such_bench_module"), quick=True, log_dir=tmp_path)
    assert res == {"status": "missing", "error": "bench/no_such_bench_module.py is not in this tree"}


def test_a_failing_module_is_reported_with_its_exit_and_log(tmp_path):
    res = run_module(Module("report", "report", quick=()), quick=True, log_dir=tmp_path)   # no results.json arg
    assert res["status"] == "failed"
    assert res["error"].startswith("exit 2: ") and "the following arguments are required: results" in res["error"]
    assert (tmp_path / "report.log").read_text().startswith("$ ")


# Those not in this tree are reported as missing by run.py (test above).
PRESENT = [m for m in (*MODULES, CLUSTER) if importlib.util.find_spec(f"bench.{m.module}") is not None]


@pytest.mark.parametrize("m", PRESENT, ids=lambda m: m.name)
def test_every_flag_make_bench_passes_is_one_the_module_takes(m):
    """A renamed or dropped option would fail that benchmark in every `make bench`."""
    helptext = subprocess.run([sys.executable, "-m", f"bench.{m.module}", "--help"], capture_output=True,
                              text=True, cwd=ROOT, timeout=60, check=True).stdout
    for flag in {a for a in (*m.full, *m.quick) if a.startswith("-")}:
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", helptext), f"bench.{m.module} has no {flag}"


def test_summary_without_goals_says_so():
    assert report.summary(results(x={"status": "ok", "output": {"figures": [fig("compile", 800, "ms")]}})) == \
        "no figure here has a goal"
