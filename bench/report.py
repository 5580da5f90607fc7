"""`make bench`'s report: one table, results.json and PNG charts from the
CONTRACT15 "figures" and "series" every benchmark module prints.

The table is markdown (it goes into the README as is): figure, value, goal,
whether the goal is met, the ratio and what it compares with, and the
absolute medians with min-max behind it. Charts: one line chart per series
and one bar chart of every ratio figure (1.0 = as fast as the baseline).
The README's benchmark section between the markers is replaced with the
table, the chart links and the machine the numbers came from, so that the
README never shows numbers without saying where they were measured.

    python -m bench.report bench/results/<ts>/results.json [--readme README.md]

re-renders a run's table, charts and (with --readme) the README section.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN = "<!-- bench:begin: written by `make bench` (bench/report.py); edits inside are replaced -->"
END = "<!-- bench:end -->"
CHART_DIR = ROOT / "docs" / "bench"   # the README's charts: bench/results/ is not committed
MISSING_MATPLOTLIB = "matplotlib is not installed: `make install` installs it (the `bench` extra)"


# ----------------------------------------------------------------- machine

def machine(proc: str = "/proc") -> dict[str, Any]:
    """CPU model, cores, kernel and memory of this host, from /proc, so the
    numbers always travel with the machine they were measured on."""
    cpuinfo = Path(proc, "cpuinfo").read_text()
    model = None
    for key in ("model name", "Hardware", "cpu model", "Processor"):   # x86, then arm/mips/others
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.M)
        if m:
            model = m.group(1).strip()
            break
    cores = len(re.findall(r"^processor\s*:", cpuinfo, re.M)) or os.cpu_count()
    kernel = Path(proc, "sys/kernel/osrelease").read_text().strip()
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path(proc, "meminfo").read_text(), re.M)
    return {"cpu": model or "unknown", "cores": cores, "kernel": kernel,
            "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None}


def machine_line(m: dict[str, Any]) -> str:
    mem = f", {m['memory_gib']} GiB RAM" if m.get("memory_gib") else ""
    return f"{m['cpu']}, {m['cores']} cores{mem}, Linux {m['kernel']}"


# ------------------------------------------------------------------- table

def figures(results: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(module, figure) for every figure of every module that ran."""
    for module, run in results["modules"].items():
        for fig in (run.get("output") or {}).get("figures") or []:
            yield module, fig


def _num(v: float | None) -> str:
    if v is None:
        return ""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def _cell(text: Any) -> str:
    """A markdown table cell: pipes escaped, no line breaks."""
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def value_text(fig: dict[str, Any]) -> str:
    unit = fig.get("unit") or ""
    return f"{_num(fig['value'])}x" if unit == "x" else f"{_num(fig['value'])} {unit}".rstrip()


def met_text(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[met]


def spread_text(fig: dict[str, Any]) -> str:
    if fig.get("min") is None or fig.get("max") is None:
        return ""
    return f"{_num(fig['min'])}-{_num(fig['max'])}"


def table(results: dict[str, Any]) -> str:
    """The markdown table, then one line per module that did not give figures."""
    lines = ["| benchmark | figure | value | min-max | goal | met | vs | absolute (median, min-max) |",
             "|---|---|---|---|---|---|---|---|"]
    for module, fig in figures(results):
        lines.append("| " + " | ".join(_cell(c) for c in (
            module, fig["name"], value_text(fig), spread_text(fig), fig.get("goal"), met_text(fig.get("met")),
            fig.get("baseline"), fig.get("absolute"))) + " |")
    notes = []
    for module, run in results["modules"].items():
        status = run.get("status")
        if status == "missing":
            notes.append(f"- `{module}`: not run: {run['error']}")
        elif status == "failed":
            notes.append(f"- `{module}`: FAILED after {run.get('seconds', 0):.0f} s: {run['error']}")
        elif status == "skipped":
            notes.append(f"- `{module}`: skipped: {run['error']}")
        elif not (run.get("output") or {}).get("figures"):
            notes.append(f"- `{module}`: ran but printed no figures")
    return "\n".join(lines + ([""] + notes if notes else []))


def summary(results: dict[str, Any]) -> str:
    """Goals met / missed, in one line."""
    met = [f for _m, f in figures(results) if f.get("met") is True]
    missed = [f for _m, f in figures(results) if f.get("met") is False]
    if not met and not missed:
        return "no figure here has a goal"
    return (f"{len(met)} of {len(met) + len(missed)} goals met"
            + (": missed " + "; ".join(f"{f['name']} {value_text(f)} (goal {f['goal']})" for f in missed)
               if missed else ""))


# ------------------------------------------------------------------ charts

def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError(MISSING_MATPLOTLIB) from e
    matplotlib.use("Agg")   # files only: no display on a benchmark host
    import matplotlib.pyplot as plt
    return plt


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "chart"


def line_chart(series: dict[str, Any], path: Path) -> Path:
    """One CONTRACT15 series as a line chart (one line per entry of "lines")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for name, ys in series["lines"].items():
            if len(ys) != len(series["x"]):
                raise ValueError(f"series {series.get('title')!r}: line {name!r} has {len(ys)} points "
                                 f"for {len(series['x'])} x values")
            ax.plot(series["x"], ys, marker="o", label=name)
        ax.set_title(series.get("title", ""))
        ax.set_xlabel(series.get("xlabel", ""))
        ax.set_ylabel(series.get("ylabel", ""))
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def ratio_chart(results: dict[str, Any], path: Path) -> Path | None:
    """Every ratio figure as a bar (min-max as the error bar), 1.0 marked:
    green where the goal is met, red where missed, grey without a goal."""
    rows = [(m, f) for m, f in figures(results) if f.get("ratio") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 0.4 * len(rows) + 1.4))
    try:
        labels = [f"{f['name']} (vs {f['baseline']})" for _m, f in rows]
        values = [f["ratio"] for _m, f in rows]
        colors = [{True: "tab:green", False: "tab:red", None: "tab:gray"}[f.get("met")] for _m, f in rows]
        err = [[max(0.0, v - (f.get("min") if f.get("min") is not None else v)) for v, (_m, f) in zip(values, rows)],
               [max(0.0, (f.get("max") if f.get("max") is not None else v) - v) for v, (_m, f) in zip(values, rows)]]
        y = list(range(len(rows)))[::-1]
        ax.barh(y, values, xerr=err, color=colors, capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        for yi, v, hi in zip(y, values, err[1]):
            ax.text(v + hi, yi, f"  {v:.2f}x", va="center", fontsize=8)
        ax.set_xlim(0, max(v + hi for v, hi in zip(values, err[1])) * 1.15)
        ax.set_xlabel("ratio, 1.0 = the baseline (green: goal met, red: missed, grey: no goal)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def charts(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """ratios.png plus <module>-<series>.png for every series."""
    out = []
    ratio = ratio_chart(results, out_dir / "ratios.png")
    if ratio is not None:
        out.append(ratio)
    for module, run in results["modules"].items():
        for key, series in ((run.get("output") or {}).get("series") or {}).items():
            out.append(line_chart(series, out_dir / f"{slug(module)}-{slug(key)}.png"))
    return out


# ----------------------------------------------------------------- outputs

def write(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """results.json, table.md and the charts under ``out_dir``; returns their paths.
    A chart that cannot be drawn (no matplotlib) is reported, the rest stays written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "table.md").write_text(table(results) + "\n")
    try:
        made, error = charts(results, out_dir), None
    except RuntimeError as e:
        made, error = [], str(e)
    return {"results": out_dir / "results.json", "table": out_dir / "table.md", "charts": made,
            "chart_error": error}


def readme_section(results: dict[str, Any], chart_links: list[str]) -> str:
    """The README's benchmark block: machine, the table, the charts."""
    m = results["machine"]
    kind = "BENCH_QUICK=1 (short rounds)" if results.get("quick") else "full run"
    lines = [BEGIN, "",
             f"Latest `make bench` ({kind}, {results['finished']}, {results['duration_s'] / 60:.1f} min) on "
             f"{machine_line(m)}. {summary(results)}.", "",
             table(results), ""]
    lines += [f"![{Path(link).stem}]({link})" for link in chart_links]
    return "\n".join(lines + ["", END])


def update_readme(text: str, section: str) -> str:
    """``text`` with the block between the markers replaced by ``section``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no benchmark markers ({BEGIN!r} ... {END!r})")
    return text[:start] + section + text[end + len(END):]


def publish(results: dict[str, Any], charts_made: list[Path], readme: Path, chart_dir: Path = CHART_DIR) -> None:
    """Copy the charts next to the docs (committed) and rewrite the README block."""
    chart_dir.mkdir(parents=True, exist_ok=True)
    for old in chart_dir.glob("*.png"):
        old.unlink()
    links = []
    for path in charts_made:
        shutil.copy(path, chart_dir / path.name)
        links.append(os.path.relpath(chart_dir / path.name, readme.parent))
    readme.write_text(update_readme(readme.read_text(), readme_section(results, links)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a run's results.json")
    ap.add_argument("--readme", type=Path, help="also rewrite this README's benchmark section")
    args = ap.parse_args()
    results = json.loads(args.results.read_text())
    paths = write(results, args.results.parent)
    print(table(results))
    if paths["chart_error"]:
        raise SystemExit(paths["chart_error"])
    if args.readme:
        publish(results, paths["charts"], args.readme)


if __name__ == "__main__":
    main()
