"""Summarise the ``result.json`` files of a folder of runs beside the paper's numbers.

    python tools/report.py runs/table1 [--table table1] > report.md

Runs are grouped by table row (from ``--method`` and the base loss), dataset, imbalance factor
and protocol (schedule and caps); seeds of one group are averaged (mean ± sample std). Both the
final-epoch and the best-epoch error are shown, labelled; the paper's number and the difference
(ours final minus paper) stand beside them. A row or setting without runs says "missing".
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

PAPER = Path(__file__).with_name("paper_results.json")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from methods import TABLES, row_name  # noqa: E402

PROTOCOL_KEYS = ("epochs", "meta_start", "lr_milestones", "max_train_batches", "batch_size", "lam")


def load_runs(folder):
    runs = []
    for path in sorted(Path(folder).rglob("result.json")):
        result = json.loads(path.read_text())
        config = result["config"]
        row = row_name(config.get("method", "metasaug"), result["base_loss"])
        protocol = ", ".join(f"{k} {config.get(k)}" for k in PROTOCOL_KEYS)
        runs.append(dict(row=row, dataset=config["dataset"], imbalance=round(1 / config["imb_factor"]),
                         protocol=protocol, seed=result["seed"], final=result["final_top1_error"],
                         best=result["best_top1_error"], shots=result["shot_accuracy"], path=str(path)))
    return runs


def mean_std(values):
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def error_cell(group, paper):
    if not group:
        return "missing" + (f" · paper {paper:.2f}" if paper is not None else "")
    finals = [r["final"] for r in group]
    text = f"final {mean_std(finals)} / best {mean_std([r['best'] for r in group])} (n={len(group)})"
    if paper is not None:
        text += f" · paper {paper:.2f} · Δ {statistics.mean(finals) - paper:+.2f}"
    return text


def shot_cell(group):
    if not group:
        return "missing"
    parts = []
    for key in ("many", "medium", "few"):
        values = [r["shots"][key] for r in group if r["shots"].get(key) is not None]
        label = {"many": "Many", "medium": "Med", "few": "Few"}[key]
        parts.append(f"{label} {statistics.mean(values):.1f}" if values else f"{label} –")
    return " / ".join(parts)


def table_markdown(spec, runs, table_name, other_rows=frozenset(), only_imbalance=None):
    """One table in the paper's layout; rows that belong to another table (``other_rows``) are left out,
    and only the ``only_imbalance`` columns are shown when given."""
    table = TABLES[table_name]
    runs = [dict(r, row=table.label(r["row"])) for r in runs if r["dataset"] == spec["dataset"]]
    imbalances = sorted(set(spec["imbalance"]) | {r["imbalance"] for r in runs}, reverse=True)
    if only_imbalance:
        imbalances = [i for i in imbalances if i in only_imbalance]
    out = []
    for protocol in sorted({r["protocol"] for r in runs}) or ["(no runs)"]:
        chosen = [r for r in runs if r["protocol"] == protocol]
        groups = defaultdict(list)
        for r in chosen:
            groups[r["row"], r["imbalance"]].append(r)
        rows = list(spec["rows"]) + sorted({r["row"] for r in chosen} - set(spec["rows"]) - other_rows)
        header = "| method | " + " | ".join(f"imbalance {i}" for i in imbalances) + " |"
        rule = "|---" * (len(imbalances) + 1) + "|"
        out += [f"### {spec['title']}", "", f"Protocol: {protocol}. Top-1 error (%), mean ± std over seeds; "
                "'final' = last epoch, 'best' = best test epoch (test-set selection, as the released script "
                "prints); Δ = ours final − paper.", "", header, rule]
        for row in rows:
            papers = dict(zip(spec["imbalance"], spec["rows"].get(row, [])))
            out.append(f"| {row} | " + " | ".join(error_cell(groups.get((row, i), []), papers.get(i))
                                                  for i in imbalances) + " |")
        out += ["", "Many / Medium / Few-shot accuracy (%) at the final epoch (>100, 20–100, <20 training images):",
                "", header, rule]
        for row in rows:
            out.append(f"| {row} | " + " | ".join(shot_cell(groups.get((row, i), [])) for i in imbalances) + " |")
        out.append("")
    if spec.get("note"):
        out += [f"Paper: {spec['note']}", ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="folder searched recursively for result.json files")
    parser.add_argument("--table", choices=("table1", "table2", "table5", "all"), default="all")
    parser.add_argument("--imbalance", type=int, nargs="+", default=None,
                        help="show only these imbalance factors (e.g. 100)")
    args = parser.parse_args(argv)
    if not Path(args.runs_dir).is_dir():
        print(f"report.py: error: {args.runs_dir} is not a folder of runs", file=sys.stderr)
        return 2
    paper = json.loads(PAPER.read_text())
    runs = load_runs(args.runs_dir)
    names = list(paper["tables"]) if args.table == "all" else [args.table]
    print(f"{len(runs)} runs under {args.runs_dir}. Paper numbers: {paper['source']}.\n")
    for name in names:
        others = {TABLES[name].label(row) for other, spec in paper["tables"].items() if other != name
                  for row in spec["rows"]}
        print(table_markdown(paper["tables"][name], runs, name, others - set(paper["tables"][name]["rows"]),
                             args.imbalance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
