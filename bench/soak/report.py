"""The soak's tables, from its summary (``bench/results/soak.json``).

print(render(json.loads(Path("bench/results/soak.json").read_text())))
"""

from __future__ import annotations

from typing import Any

from bench.common import table
from bench.soak.compare import fmt, max_known

DIFFERENCES_SHOWN = 6  # below the tables; the JSON lists them all


def render(summary: dict[str, Any]) -> str:
    stages = list(summary["stages_hit"])
    escaped = summary.get("stages_escaped", {})
    rows = [
        [s, summary["quota"].get(s, 0), escaped.get(s, 0), summary["stages_aimed"].get(s, 0)]
        + [summary["stages_hit"][s], summary["stages_hit_between"][s]]
        for s in stages
    ]
    rows.append(
        ["all", sum(summary["quota"].values()), sum(escaped.values())]
        + [sum(summary["stages_aimed"].values()), summary["kills"]]
        + [sum(summary["stages_hit_between"].values())]
    )
    d = summary["durations"]
    load = summary.get("load_average", {"start": ["?"] * 3, "end": ["?"] * 3})
    lines = [
        f"machine: {summary['machine']}",
        "load average (1, 5, 15 min) at the start {} {} {}, at the end {} {} {}".format(
            *load["start"], *load["end"]
        ),
        f"config {summary['config']}, seed {summary['seed']}, {summary['kills']} SIGKILLs "
        f"({summary['kills_requested']} requested, at most {summary['per_pass']} per stage and "
        "pass) over "
        f"{summary['passes']} pass(es) from empty folders; {summary['invocations']} invocations, "
        f"{summary['restarts']} restarts",
        "",
        table(
            ["stage", "quota", "escaped", "kills aimed", "kills landed", "after its done line"],
            rows,
        ),
        "",
    ]
    categories: dict[str, dict[str, Any]] = {}
    for pass_ in summary["comparisons"]:
        for row in pass_["categories"]:
            agg = categories.setdefault(
                row["category"], {"checks": 0, "equal": True, "max_abs_diff": None}
            )
            agg["checks"] += row["checks"]
            agg["equal"] = agg["equal"] and row["equal"]
            agg["max_abs_diff"] = max_known([agg["max_abs_diff"], row["max_abs_diff"]])
    lines.append(
        table(
            ["comparison with the reference", "checks", "equal", "max abs diff"],
            [
                [c, v["checks"], "yes" if v["equal"] else "NO", fmt(v["max_abs_diff"])]
                for c, v in categories.items()
            ],
        )
    )
    differences = [(p["pass"], d) for p in summary["comparisons"] for d in p["differences"]]
    for pass_no, diff in differences[:DIFFERENCES_SHOWN]:
        largest = diff["max_abs_diff"]
        lines.append(
            f"  pass {pass_no}: {diff['category']} {diff['what']}: {diff['detail']}"
            + ("" if largest is None else f" (max abs {fmt(largest)})")
        )
    if len(differences) > DIFFERENCES_SHOWN:
        lines.append(f"  ... {len(differences) - DIFFERENCES_SHOWN} more differences in the JSON")
    leftovers = [n for p in summary["comparisons"] for n in p["tfds_leftovers"].values()]
    if leftovers:
        lines.append(
            f"  tensorflow-datasets left {len(leftovers)} incomplete.* folder(s) under tfds/ "
            f"({sum(leftovers) / 2**20:.1f} MiB), from builds that were killed (not compared)"
        )
    for failure in summary["failures"]:
        lines.append(
            f"  FAILED: pass {failure['pass_no']} invocation {failure.get('index', '-')} "
            f"({failure['outcome']}, exit {failure.get('returncode', '-')}): "
            f"{failure.get('log', '')}"
        )
    lines += [
        "",
        f"reference run {d['reference_seconds']:.1f} s; kills and restarts "
        f"{d['soak_seconds']:.1f} s "
        f"(mean {fmt(d['mean_kill_cycle_seconds'])} s per kill, "
        f"{fmt(d['mean_invocation_seconds'])} s per invocation); comparisons "
        f"{d['compare_seconds']:.1f} s; total {d['total_seconds']:.1f} s",
        "result: "
        + ("EQUAL to the uninterrupted run" if summary["equal"] else "NOT EQUAL or failed"),
    ]
    return "\n".join(lines)


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    return f"{r['kills']} SIGKILLs: {'equal' if r['equal'] else 'NOT equal'} to the unbroken run"
