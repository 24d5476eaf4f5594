"""The frontier: probe top-1 against pretraining length, drawn from `bench.recipe` rows.

    python -m bench.frontier --runs bench/results/recipes.jsonl \
        --baselines metrics/baselines.json --out frontier.png

`--runs` holds `bench.recipe` rows (one JSON object a line); every row is a point, and
rows that share a name and differ in steps are one recipe's line. The x axis is optimizer
steps, which do not depend on the machine; each point is labelled with its training
minutes and, where the row has it, the machine's fp32 matmul rate, since minutes only
compare at one rate. Recipes whose steps cost different times (e.g. two patch sizes) are
compared with `--x bench-minutes`: steps times the row's `bench_step_ms`, one step of its
recipe timed by `bench/train_step.py` in the same process as the other recipes' (`--vs`),
so every point is in minutes of one machine at one moment. `--baselines` is the
pipeline's `metrics/baselines.json` (the probe on raw pixels and on a random encoder,
test top-1): each is a horizontal line, and the issue's targets (pixels + 2, random + 10)
are dotted lines above them. Prints the points as a table too.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from bench.recipe import rate_text
from jepa.io import atomic_output

TARGETS = {"pixels": 2.0, "random": 10.0}  # points above each baseline's test top-1
AXES = ("steps", "bench-minutes")


def x_value(row: dict, axis: str) -> float:
    """Where a row stands on the x axis: its optimizer steps, or those steps in minutes."""
    return row["steps"] if axis == "steps" else row["steps"] * row["bench_step_ms"] / 60_000


def read_rows(path: Path, axis: str = "steps") -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not a JSON row of bench.recipe: {err}") from err
        missing = {"name", "steps", "train_s", "val_top1", "top1"} - row.keys()
        if missing:
            raise ValueError(
                f"{path}:{number} lacks {sorted(missing)}: rows come from `python -m bench.recipe`"
            )
        if axis == "bench-minutes" and "bench_step_ms" not in row:
            raise ValueError(
                f"{path}:{number} ({row['name']!r}) has no 'bench_step_ms' for --x bench-minutes: "
                f"time its recipe with `python -m bench.train_step ... --vs` beside the others' "
                f"and add the step's ms to the row, or draw against --x steps"
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no rows; run `python -m bench.recipe` to add some")
    return rows


def minutes_label(row: dict) -> str:
    label = f"{row['train_s'] / 60:.0f} min"
    rates = sorted({round(t, 2) for t in row.get("fp32_tflops", [])})
    if rates:
        label += " @ " + "–".join(f"{t:.2f}" for t in rates)
    return label


def table(rows: list[dict], axis: str = "steps") -> str:
    bench = axis == "bench-minutes"  # the x axis in minutes gets a column of its own
    lines = [
        "| recipe | seed | steps | " + ("bench min | " if bench else "")
        + "training min | fp32 TFLOP/s | val top-1 | test top-1 |",
        "|---|---:|---:|" + ("---:|" if bench else "") + "---:|---|---:|---:|",
    ]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["name"], r["steps"])):
        lines.append(
            f"| {r['name']} | {r.get('seed', '?')} | {r['steps']} | "
            + (f"{x_value(r, axis):.1f} | " if bench else "")
            + f"{r['train_s'] / 60:.1f} | {rate_text(r)} | {100 * r['val_top1']:.2f} "
            f"| {100 * r['top1']:.2f} |"
        )
    return "\n".join(lines)


def draw(rows: list[dict], baselines: dict | None, out: Path, axis: str = "steps") -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    recipes: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        recipes[row["name"]].append(row)
    for name, points in recipes.items():
        points.sort(key=lambda r: r["steps"])
        xs = [x_value(r, axis) for r in points]
        (line,) = ax.plot(xs, [100 * r["top1"] for r in points], "o-", label=f"{name}: test")
        ax.plot(xs, [100 * r["val_top1"] for r in points], "s--", color=line.get_color(),
                alpha=0.6, label=f"{name}: validation (chosen by)")  # fmt: skip
        for x, r in zip(xs, points, strict=True):
            ax.annotate(minutes_label(r), (x, 100 * r["top1"]), fontsize=7,
                        xytext=(4, -12), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log", base=2)
    ticks = sorted({x_value(r, axis) for r in rows})
    ax.set_xticks(ticks, [f"{x:.0f}" if axis == "steps" else f"{x:.1f}" for x in ticks],
                  fontsize=8, rotation=90 if len(ticks) > 6 else 0)  # fmt: skip
    ax.minorticks_off()
    at_left = ax.get_yaxis_transform()  # x in axes fractions, y in data
    for kind, margin in TARGETS.items():
        if baselines is None or kind not in baselines:
            continue
        top1 = 100 * baselines[kind]["top1"]
        colour = "grey" if kind == "pixels" else "black"
        ax.axhline(top1, color=colour, lw=1)
        ax.text(0.01, top1, f"{kind} {top1:.2f}", transform=at_left, va="bottom", fontsize=8)
        ax.axhline(top1 + margin, color=colour, lw=1, ls=":")
        ax.text(0.01, top1 + margin, f"{kind} + {margin:g} = {top1 + margin:.2f} (target)",
                transform=at_left, va="bottom", fontsize=8)  # fmt: skip
    ax.set_xlabel(
        "optimizer steps (log scale)" if axis == "steps" else
        "minutes of pretraining at one bench run's step times (log scale)"
    )  # fmt: skip
    ax.text(0.99, 0.99, "labels: the run's own training minutes @ fp32 TFLOP/s",
            transform=ax.transAxes, ha="right", va="top", fontsize=7)  # fmt: skip
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Probe accuracy against pretraining length (standard protocol)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True, help="bench.recipe rows (JSONL)")
    parser.add_argument("--baselines", type=Path, default=None, help="metrics/baselines.json")
    parser.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    parser.add_argument(
        "--x", choices=AXES, default="steps",
        help="the x axis: optimizer steps, or steps x each row's bench_step_ms in minutes",
    )  # fmt: skip
    args = parser.parse_args()
    try:
        rows = read_rows(args.runs, args.x)
        baselines = json.loads(args.baselines.read_text()) if args.baselines else None
        for kind in TARGETS:
            if baselines is not None and "top1" not in baselines.get(kind, {"top1": None}):
                raise ValueError(f"{args.baselines}: {kind!r} has no 'top1'; pass the "
                                 f"pipeline's metrics/baselines.json")  # fmt: skip
    except (OSError, ValueError) as err:  # a missing or malformed input: say which, exit 2
        parser.error(str(err))
    draw(rows, baselines, args.out, args.x)
    print(table(rows, args.x))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
