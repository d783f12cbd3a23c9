"""Summarise the ``result.json`` files of a folder of runs beside the paper's numbers.

    python tools/report.py runs/table1 [more folders] [--table table1 [table5 ...]] [--imbalance 100 | 0.01]
                           [--format markdown|csv|latex] [--all]

Every folder given is searched; a cell pools its runs across them (e.g. ``results/cifar10_jpeg runs/table1``:
the committed runs and a sweep's), and a run found twice (an exported copy: the same result.json) counts once.
Runs are grouped by table row (``methods.py``: method and base loss), dataset, imbalance and protocol
(schedule, caps and test-set coverage); the seeds of one group are averaged (mean ± sample std; a
single run has no spread to show, so its number stands alone, with n=1). The
final-epoch error is the headline; the best-epoch error (test-set selection, as the released script
prints) stands beside it, labelled; then the paper's number and the difference (ours final − paper).
How often a run evaluated its first phase (``--eval_every``) does not change its training (the final weights
are bit-identical, tests/test_run_table.py checks), so runs of every ``--eval_every`` pool; the best epoch is
taken over the epochs every run of the cell evaluated, and the report says which.
Only tables, imbalances and rows that have runs are printed, unless ``--all`` asks for the paper's
whole grid ("missing" where a run is absent). Runs of one cell must share their long-tail subset
(``train_index_sha256``): the report refuses to average runs trained on different images.
"""
import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

PAPER = Path(__file__).with_name("paper_results.json")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cifar_flags import RECIPES  # noqa: E402
from cli import OneLineParser, imbalance_factor  # noqa: E402
from methods import METHODS, SHORT_NAMES, TABLES, large_scale_cells, row_name  # noqa: E402

# The keys of a run's schedule that set it apart, as the released scripts set them (lam: the released commands'
# per dataset); a run's protocol is said as its recipe's schedule plus what it changes of them.
FULL_PROTOCOL = dict(epochs=200, meta_start=160, lr_milestones=[160, 180], batch_size=100, max_train_batches=None)
RELEASED_LAM = {"cifar10": 0.25, "cifar100": 0.75}


def protocol_of(config, tested, whole):
    """What a run changed of its recipe's schedule (every key of FULL_PROTOCOL), and the test images: runs of
    equal protocols share a table, whichever recipe each row follows (protocol_text says it in full)."""
    recipe = RECIPES[config.get("recipe", "released")]
    full = dict(FULL_PROTOCOL, lam=RELEASED_LAM[config["dataset"]],
                **{k: v for k, v in recipe.flags.items() if k in FULL_PROTOCOL})
    changed = [f"{k} {config.get(k, default)}" for k, default in full.items() if config.get(k, default) != default]
    return ", ".join(changed + [f"test images {tested}" + ("" if tested == whole else f" of {whole} {PARTIAL}")])


def protocol_text(protocol, recipes, dataset):
    """A table's protocol in full: its lead recipe's schedule (the released one where any row follows it), then
    ``protocol`` (what its runs changed, their test images), then each other recipe (``recipes``: recipe -> the
    rows of runs that follow it) with its rows and schedule."""
    lead = "released" if "released" in recipes or not recipes else min(recipes)
    text = f"{RECIPES[lead].schedule.format(lam=RELEASED_LAM[dataset])}, {protocol}"
    return text + "".join(f"; {' and '.join(rows)}: {RECIPES[recipe].schedule}"
                          for recipe, rows in sorted(recipes.items()) if recipe != lead)


CIFAR_TEST_IMAGES = 10000
PARTIAL = "†"


class ReportError(ValueError):
    """Runs that cannot be summarised together; the message names them."""


STUDY = "study"  # runs under a folder of this name are arms of the meta-step study, not paper rows
SPECTRA = "spectra.json"  # beside the study's runs: the rarest class's spectra (tools/figure2.py --study)


def load_runs(folders):
    """The runs under every folder of ``folders``; a result.json found twice (a run and its exported copy)
    once."""
    runs, seen = [], set()
    for folder, path in ((folder, path) for folder in folders for path in sorted(Path(folder).rglob("result.json"))):
        text = path.read_text()
        if text in seen:
            continue
        seen.add(text)
        result = json.loads(text)
        if STUDY in path.relative_to(folder).parts[:-1]:
            runs.append(study_arm(result, path))
            continue
        if "stage" in result:  # ImageNet_iNat/train.py
            runs.append(large_scale_run(result, path))
            continue
        config = result["config"]
        tested, whole = test_images(result)
        protocol = protocol_of(config, tested, whole)
        recipe = config.get("recipe", "released")
        runs.append(dict(row=row_name(config.get("method", "metasaug"), result["base_loss"], recipe), recipe=recipe,
                         dataset=config["dataset"], imbalance=round(1 / config["imb_factor"]), protocol=protocol,
                         partial=tested != whole, seed=result["seed"], final=result["final_top1_error"],
                         best=result["best_top1_error"], shots=result["shot_accuracy"],
                         subset=result.get("train_index_sha256"), path=str(path),
                         eval_every=config.get("eval_every", 1),
                         meta_start=config.get("meta_start", FULL_PROTOCOL["meta_start"]),
                         errors={h["epoch"]: 100 - h["test_top1"] for h in result["history"]
                                 if h.get("test_top1") is not None}))
    return runs


LARGE_SCALE_KEYS = ("recipe", "stage", "epochs", "batch_size", "lr", "lr_milestones", "lam", "max_train_batches")


def large_scale_run(result, path):
    """An ImageNet-LT / iNaturalist run and the cells of Tables 3, 4 and 6 it fills (methods.large_scale_cells)."""
    config, dataset = result["config"], result["dataset"]
    cells = large_scale_cells(dataset, result["arch"], result["stage"])
    tested, whole = result["evaluated_images"], result.get("evaluation_split_images", result["evaluated_images"])
    protocol = ", ".join(f"{k} {config.get(k)}" for k in LARGE_SCALE_KEYS)
    protocol += f", test images {tested}" + ("" if tested == whole else f" of {whole} {PARTIAL}")
    final = result["final_top1_error"]
    return dict(cells=cells, dataset=dataset, protocol=protocol, partial=tested != whole, seed=result["seed"],
                final=final, best=None, shots=result["shot_accuracy"], subset=None, path=str(path))


def study_arm(result, path):
    """One run of the meta-step study: its arm (the folder's name without ``_b<branch seed>``), knobs, the meta
    step's logged size (the per-epoch mean over classes of ||S_learned - S_est|| / ||S_est||, averaged over the
    second phase), its final error and its test error at every second-phase epoch (``curve``)."""
    config = result["config"]
    steps = [h["meta_step_shift_mean"] for h in result["history"] if h.get("meta_step_shift_mean") is not None]
    name = path.parent.name
    arm = name.rsplit("_b", 1)[0] if name.rsplit("_b", 1)[-1].isdigit() else name
    meta_step = METHODS[config["method"]].meta_step
    spectra = path.parent.parent / SPECTRA
    spectrum = json.loads(spectra.read_text())["runs"].get(name) if spectra.is_file() else None
    curve = {h["epoch"]: 100 - h["test_top1"] for h in result["history"]
             if h["epoch"] > config["meta_start"] and h.get("test_top1") is not None}
    return dict(curve=curve, study=arm, meta_step=meta_step, meta_lr=config["meta_lr"] if meta_step else 0.0,
                lookahead_lr=config.get("lookahead_lr") if meta_step else None, carry=config.get("carry_cv", False),
                branch_seed=config.get("branch_seed", 0), step=sum(steps) / len(steps) if steps else 0.0,
                final=result["final_top1_error"], shots=result["shot_accuracy"], dataset=config["dataset"],
                imbalance=round(1 / config["imb_factor"]), path=str(path),
                spectrum=None if spectrum is None else spectrum.get("learned", spectrum["estimated"]))


def study_markdown(runs):
    """The meta-step study: an arm per row, its errors per branch seed, and the paired difference to the ISDA
    arm (no meta step) of the same branch seed, where both ran."""
    arms = defaultdict(list)
    for r in runs:
        arms[r["dataset"], r["imbalance"], r["study"]].append(r)
    out = []
    for dataset, imbalance in sorted({key[:2] for key in arms}):
        group = {key[2]: sorted(value, key=lambda r: r["branch_seed"]) for key, value in arms.items()
                 if key[:2] == (dataset, imbalance)}
        isda = {r["branch_seed"]: r for arm in group.values() for r in arm if not r["meta_step"]}
        seeds = sorted({r["branch_seed"] for arm in group.values() for r in arm})
        name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(dataset, dataset)
        out += [f"#### Does the meta step matter? {name}-LT, imbalance {imbalance}", "",
                "Second phases branched from one first phase; final-epoch top-1 error (%) per branch seed; "
                "step: the meta step's logged mean relative shift of a class's covariance (over the classes in "
                "each batch, averaged over the epochs); Δ: the arm's error minus the ISDA arm's of the same branch "
                "seed (mean ± sample std over the pairs); per epoch: the same difference at every second-phase epoch, "
                "averaged over the epochs (mean ± std over the pairs), and at how many of the pairs' epochs the arm's "
                "error is the lower; rarest Σ: the rarest class's covariance as the arm's "
                "update uses it: learned by the arm's own meta step (its γ, α as at the second phase's start) from "
                "its final network and estimate (ISDA: the estimate), singular values 2-5 over the largest, mean over "
                "branch seeds "
                f"(tools/figure2.py --study; '–' before its {SPECTRA} has the arm).", "",
                "| arm | γ (meta_lr) | α (lookahead) | carried Σ | step | " +
                " | ".join(f"b{seed}" for seed in seeds) +
                " | Δ vs ISDA | Δ per epoch (ahead) | many / medium / few | rarest Σ s2–s5 |",
                "|---" * (len(seeds) + 9) + "|"]
        for name, arm in sorted(group.items(), key=lambda item: (item[1][0]["step"], item[0])):
            first = arm[0]
            finals = {r["branch_seed"]: r["final"] for r in arm}
            pairs = [(r, isda[r["branch_seed"]]) for r in arm if r["branch_seed"] in isda and first["meta_step"]]
            deltas = [r["final"] - reference["final"] for r, reference in pairs]
            delta = "–" if not deltas else fmt(summary(deltas)) + (f" (n={len(deltas)})" if len(deltas) > 1 else "")
            shots = " / ".join(fmt(summary([r["shots"][k] for r in arm])) if all(
                r["shots"].get(k) is not None for r in arm) else "–" for k in ("many", "medium", "few"))
            alpha = "released (lr)" if first["lookahead_lr"] is None else f"{first['lookahead_lr']:g}"
            out.append(f"| {name} | {first['meta_lr']:g} | {alpha if first['meta_step'] else '–'} | "
                       f"{'yes' if first['carry'] else 'no'} | {first['step']:.1e} | " +
                       " | ".join(f"{finals[s]:.2f}" if s in finals else "–" for s in seeds) +
                       f" | {delta} | {epoch_lead_text(pairs)} | {shots} | {spectrum_text(arm)} |")
        out.append("")
    return out


def epoch_lead_text(pairs):
    """The paired difference at every second-phase epoch both runs evaluated: its mean over the epochs (mean ±
    std over the pairs), and at how many of the pairs' epochs the arm's error is the lower. Less noisy than the
    final epoch alone, whose error moves by tenths of a point from one epoch to the next."""
    leads = [[run["curve"][e] - isda["curve"][e] for e in sorted(run["curve"].keys() & isda["curve"].keys())]
             for run, isda in pairs]
    leads = [lead for lead in leads if lead]
    if not leads:
        return "–"
    ahead = sum(d < 0 for lead in leads for d in lead)
    return f"{fmt(summary([sum(lead) / len(lead) for lead in leads]))} ({ahead}/{sum(map(len, leads))})"


def spectrum_text(arm):
    """Singular values 2-5 (over the largest) of the rarest class's covariance, averaged over the arm's runs."""
    spectra = [r["spectrum"] for r in arm if r["spectrum"] is not None]
    if not spectra:
        return "–"
    return " ".join(f"{sum(values) / len(values):.2f}" for values in list(zip(*spectra))[1:])


def test_images(result):
    """(test images a run's evaluation saw, test images there were); results written before these were
    recorded are taken as CIFAR's 10,000 capped by --max_test_batches."""
    if "test_images" in result:
        return result["test_images"], result["test_set_images"]
    cap, batch = result["config"].get("max_test_batches"), result["config"]["test_batch_size"]
    return (CIFAR_TEST_IMAGES if cap is None else min(CIFAR_TEST_IMAGES, cap * batch)), CIFAR_TEST_IMAGES


def check_cell(group):
    """Refuse to average runs of different long-tail subsets or a seed counted twice."""
    subsets = {r["subset"] for r in group if r["subset"] is not None}
    if len(subsets) > 1:
        raise ReportError(f"runs of one cell were trained on different long-tail subsets (train_index_sha256): "
                          f"{', '.join(r['path'] for r in group)}; report them separately")
    seeds = [r["seed"] for r in group]
    if len(set(seeds)) < len(seeds):
        raise ReportError(f"seed {max(seeds, key=seeds.count)} appears twice in one cell: "
                          f"{', '.join(r['path'] for r in group)}; keep one of them")


def summary(values):
    """(mean, sample std); the std is None for one value, which has no spread."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def best_over_common_epochs(group):
    """Each run's best-epoch error over the epochs every run of ``group`` evaluated (runs of another --eval_every
    evaluated other first-phase epochs), and those epochs in words."""
    common = set.intersection(*(set(r["errors"]) for r in group))
    every = math.lcm(*(r["eval_every"] for r in group))  # a first-phase epoch all of them evaluated
    meta_start = group[0]["meta_start"]
    words = ("every epoch" if every == 1 else
             f"every {every} epochs to epoch {meta_start}, then every epoch (--eval_every {every})")
    return [min(r["errors"][epoch] for epoch in common) for r in group], words


def cell(group, paper):
    """The figures of one table cell: n, final and best (mean, std; ``best_over``: the epochs the best was taken
    over), paper, Δ, shots, partial coverage."""
    if group:
        check_cell(group)
    figures = dict(n=len(group), paper=paper, partial=any(r["partial"] for r in group))
    if group:
        figures["final"] = summary([r["final"] for r in group])
        figures["best"] = figures["best_over"] = None
        if group[0]["best"] is not None:
            best, figures["best_over"] = best_over_common_epochs(group)
            figures["best"] = summary(best)
        figures["delta"] = figures["final"][0] - paper if paper is not None else None
        figures["seeds"] = {r["seed"]: r["final"] for r in group}
        for key in ("many", "medium", "few"):
            values = [r["shots"][key] for r in group if r["shots"].get(key) is not None]
            figures[key] = statistics.mean(values) if values else None
    return figures


def rows_elsewhere(paper, name):
    """The rows of the other CIFAR tables, and whether table ``name`` is its dataset's first table: rows of no
    table (LA, CE-DRW, ...) are printed there only, under Table 1 or 2, not again under Table 5."""
    tables = {other: spec for other, spec in paper["tables"].items() if spec.get("kind") != "large-scale"}
    others = {TABLES[name].label(row) for other, spec in tables.items() if other != name for row in spec["rows"]}
    home = min(other for other, spec in tables.items() if spec["dataset"] == tables[name]["dataset"])
    return others - set(tables[name]["rows"]), name == home


def select(spec, table_name, runs, other_rows, imbalances, show_all, extras):
    """The table's grid: for each protocol with runs, its rows (and, with ``extras``, rows of no paper table)
    x imbalances of cells."""
    table = TABLES[table_name]
    runs = [dict(r, row=table.label(r["row"])) for r in runs if "row" in r and r["dataset"] == spec["dataset"]]
    if imbalances:
        runs = [r for r in runs if r["imbalance"] in imbalances]
    grids = []
    for protocol in sorted({r["protocol"] for r in runs}) or ([None] if show_all else []):
        chosen = [r for r in runs if r["protocol"] == protocol]
        groups = defaultdict(list)
        for r in chosen:
            groups[r["row"], r["imbalance"]].append(r)
        extra = sorted({r["row"] for r in chosen} - set(spec["rows"]) - other_rows) if extras else []
        rows = [row for row in list(spec["rows"]) + extra if show_all or any(k[0] == row for k in groups)]
        if not rows:
            continue
        chosen = [r for r in chosen if r["row"] in rows]  # the columns of this table's rows only
        columns = sorted((set(spec["imbalance"]) if show_all else set()) | {r["imbalance"] for r in chosen},
                         reverse=True)
        if imbalances:
            columns = [c for c in columns if c in imbalances]
        papers = {row: dict(zip(spec["imbalance"], spec["rows"].get(row, []))) for row in rows}
        recipes = {recipe: [row for row in rows if any(r["row"] == row and r["recipe"] == recipe for r in chosen)]
                   for recipe in {r["recipe"] for r in chosen}}
        text = None if protocol is None else protocol_text(protocol, recipes, spec["dataset"])
        grids.append(dict(protocol=text, columns=columns, headers=[f"imbalance {c}" for c in columns], rows=[
            (row, [cell(groups.get((row, c), []), papers[row].get(c)) for c in columns]) for row in rows]))
    return grids


def select_large_scale(spec, table_name, runs, show_all):
    """A large-scale table's grid: the paper's rows x columns, the MetaSAug (stage 2) and CE (stage 1) cells
    filled by this repository's runs. Its rows come from different stages, so the protocol is given per row;
    runs of one cell must share theirs. The paper's rows without a run are shown with --all only."""
    runs = [r for r in runs if table_name in r.get("cells", {})]
    if not runs and not show_all:
        return []
    groups = defaultdict(list)
    for r in runs:
        groups[r["cells"][table_name]].append(r)
    for group in groups.values():
        if len({r["protocol"] for r in group}) > 1:
            raise ReportError(f"runs of one cell were trained differently: {', '.join(r['path'] for r in group)}; "
                              f"report them separately")
    rows = [row for row in spec["rows"] if show_all or any(k[0] == row for k in groups)]
    columns = [c for c in spec["columns"] if show_all or any(k[1] == c for k in groups)]
    protocols = sorted({(key[0], group[0]["protocol"]) for key, group in groups.items()})
    protocol = "; ".join(f"{row}: {text}" for row, text in protocols) or None
    papers = {row: dict(zip(spec["columns"], spec["rows"][row])) for row in rows}
    return [dict(protocol=protocol, columns=columns, headers=columns, rows=[
        (row, [cell(groups.get((row, c), []), papers[row].get(c)) for c in columns]) for row in rows])]


def fmt(pair, plus_minus=" ± "):
    mean, std = pair
    return f"{mean:.2f}" if std is None else f"{mean:.2f}{plus_minus}{std:.2f}"


def markdown_cell(figures, say_epochs=False):
    """A cell's text; ``say_epochs``: with the epochs its best was taken over (where the grid's cells differ)."""
    paper = f" · paper {figures['paper']:.2f}" if figures["paper"] is not None else ""
    if not figures["n"]:
        return "missing" + paper
    over = f" over {figures['best_over']}" if say_epochs else ""
    best = f"best {fmt(figures['best'])}{over}, " if figures["best"] else ""
    text = f"**{fmt(figures['final'])}** ({best}n={figures['n']})"
    if figures["partial"]:
        text += f" {PARTIAL}"
    if figures["delta"] is not None:
        text += f"{paper} · Δ {figures['delta']:+.2f}"
    return text


def shots_cell(figures):
    if not figures["n"]:
        return "missing"
    return " / ".join(f"{figures[k]:.1f}" if figures[k] is not None else "–" for k in ("many", "medium", "few"))


LEGEND = ("Top-1 error (%), mean ± std over seeds (n=1: a single run, no std): **final epoch** (best test epoch "
          "in brackets, test-set selection as the released script prints it); Δ = ours final − paper.")


def per_seed(grid):
    """Each seed's final-epoch error, per imbalance with several seeds in a cell: rows of one seed share
    their first phase and data order, so differences between rows are best read seed by seed."""
    out = []
    for i, (column, header) in enumerate(zip(grid["columns"], grid["headers"])):
        cells = [(row, cells[i]) for row, cells in grid["rows"]]
        if all(c["n"] < 2 for _, c in cells):
            continue
        seeds = sorted({seed for _, c in cells for seed in c.get("seeds", {})})
        out += [f"Final-epoch top-1 error (%) per seed, {header}:", "",
                "| method | " + " | ".join(f"seed {seed}" for seed in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
        out += [f"| {row} | " + " | ".join(f"{c['seeds'][seed]:.2f}" if seed in c.get("seeds", {}) else "–"
                                          for seed in seeds) + " |" for row, c in cells]
        out.append("")
    return out


def markdown(spec, grids):
    out = []
    for grid in grids:
        header = "| method | " + " | ".join(grid["headers"]) + " |"
        rule = "|---" * (len(grid["columns"]) + 1) + "|"
        partial = f" {PARTIAL} evaluated on part of the test set only." if PARTIAL in (grid["protocol"] or "") else ""
        overs = {c["best_over"] for _, cells in grid["rows"] for c in cells if c.get("best_over")}
        over = f" Best epoch over {next(iter(overs))}." if len(overs) == 1 else ""
        out += [f"#### {spec['title']}", "", f"Protocol: {grid['protocol'] or '(no runs)'}. {LEGEND}{over}{partial}",
                "", header, rule]
        out += [f"| {row} | " + " | ".join(markdown_cell(c, say_epochs=len(overs) > 1) for c in cells) + " |"
                for row, cells in grid["rows"]]
        out += ["", "Many / Medium / Few-shot accuracy (%) at the final epoch (>100, 20–100, <20 training images):",
                "", header, rule]
        out += [f"| {row} | " + " | ".join(shots_cell(c) for c in cells) + " |" for row, cells in grid["rows"]]
        out.append("")
        out += per_seed(grid)
    if grids and spec.get("note"):
        out += [f"Paper: {spec['note']}", ""]
    return out


def csv_rows(name, spec, grids):
    for grid in grids:
        for row, cells in grid["rows"]:
            for column, figures in zip(grid["columns"], cells):
                values = [figures.get(k) for k in ("final", "best")]
                yield [name, grid["protocol"], row, column, figures["n"],
                       *(f"{v[i]:.4f}" if v and v[i] is not None else "" for v in values for i in (0, 1)),
                       "" if figures["paper"] is None else figures["paper"],
                       "" if figures.get("delta") is None else f"{figures['delta']:.4f}",
                       *("" if figures.get(k) is None else f"{figures[k]:.4f}" for k in ("many", "medium", "few")),
                       int(figures["partial"]), figures.get("best_over") or ""]


CSV_HEADER = ["table", "protocol", "row", "imbalance", "n", "final_mean", "final_std", "best_mean", "best_std",
              "paper", "delta_final_minus_paper", "many", "medium", "few", "partial_test_set", "best_over"]


def latex(spec, grids):
    out = []
    for grid in grids:
        columns = grid["columns"]
        out += [f"% {spec['title']}; protocol: {grid['protocol']}",
                "\\begin{tabular}{l" + "c" * len(columns) + "}", "\\hline",
                "Method & " + " & ".join(grid["headers"]) + " \\\\", "\\hline"]
        for row, cells in grid["rows"]:
            parts = []
            for figures in cells:
                if not figures["n"]:
                    parts.append("--")
                    continue
                text = fmt(figures["final"], "$\\pm$")
                if figures["paper"] is not None:
                    text += f" ({figures['paper']:.2f})"
                parts.append(text + ("$^\\dagger$" if figures["partial"] else ""))
            out.append(f"{row} & " + " & ".join(parts) + " \\\\")
        out += ["\\hline", "\\end{tabular}",
                "% final-epoch top-1 error, mean $\\pm$ std over seeds (no std for a single run); "
                "the paper's number in brackets", ""]
    return out


GRID_IMBALANCES = (200, 100, 50, 20, 10)
DATA_NOTE = "data.txt"  # beside the runs: one line saying which images they trained and were tested on


def grid_spec(paper):
    """The results grid as a table ``select`` reads: the CIFAR-10-LT rows of methods.SHORT_NAMES in its order,
    each with the paper's numbers from whichever of its CIFAR-10 tables has the row (Table 1 first)."""
    tables = sorted((name, spec) for name, spec in paper["tables"].items()
                    if spec.get("kind") != "large-scale" and spec["dataset"] == "cifar10")
    rows = {}
    for row in SHORT_NAMES:
        numbers = {}
        for name, spec in tables:
            for imbalance, number in zip(spec["imbalance"], spec["rows"].get(TABLES[name].label(row), [])):
                numbers.setdefault(imbalance, number)
        rows[row] = [numbers.get(imbalance) for imbalance in GRID_IMBALANCES]
    return dict(dataset="cifar10", imbalance=list(GRID_IMBALANCES), rows=rows)


def results_grid(runs, paper, imbalances=None):
    """The grid's cells, one grid per protocol (``select`` groups the seeds of a row and imbalance): every row,
    every imbalance, empty cells included."""
    return select(grid_spec(paper), "table1", runs, set(), imbalances, True, False)


def data_note(folders):
    """Which images the runs under ``folders`` saw, as their data.txt says."""
    notes = {(Path(folder) / DATA_NOTE).read_text().strip() for folder in folders
             if (Path(folder) / DATA_NOTE).is_file()}
    if len(notes) == 1:
        return notes.pop()
    return f"images not described (a {DATA_NOTE} beside the runs says which)" if not notes else "; ".join(sorted(notes))


def grid_cell(figures):
    """Ours (mean ± std, n) · the paper's number in italics; '–' for either where there is none."""
    ours = "–" if not figures["n"] else f"{fmt(figures['final'])} (n={figures['n']})" + (
        f" {PARTIAL}" if figures["partial"] else "")
    return f"{ours} · " + ("–" if figures["paper"] is None else f"*{figures['paper']:.2f}*")


def seeds_text(grid):
    seeds = sorted({seed for _, cells in grid["rows"] for c in cells for seed in c.get("seeds", {})})
    return f"seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}" if seeds else "no seeds"


def grid_markdown(grids, data, paper):
    """The grid as a markdown table per protocol, each with a one-line legend under it."""
    tables = " and ".join(spec["title"].split(":")[0] for name, spec in sorted(paper["tables"].items())
                          if spec.get("kind") != "large-scale" and spec["dataset"] == "cifar10")
    out = []
    for grid in grids:
        out += ["| method | " + " | ".join(grid["headers"]) + " |", "|---" * (len(grid["columns"]) + 1) + "|"]
        out += [f"| {SHORT_NAMES[row]} | " + " | ".join(grid_cell(c) for c in cells) + " |"
                for row, cells in grid["rows"]]
        partial = f"; {PARTIAL}: evaluated on part of the test set" if PARTIAL in (grid["protocol"] or "") else ""
        out += ["", f"Top-1 error (%) at the final epoch. Ours: mean ± sample std over {seeds_text(grid)} (n runs; "
                f"one run: no std), {data}, {grid['protocol'] or '(no runs)'}. *In italics*: the paper's number "
                f"({paper['source'].split(':')[0]}, {tables}: the authors' runs, on the original CIFAR-10). –: no "
                f"committed run, or no number in the paper{partial}. ISDA w/o meta-learning is the paper's "
                f"'MetaSAug w/o meta-learning'.", ""]
    return out


def imbalance_ratio(text):
    """--imbalance as the report's columns name it (100), given as a ratio or a factor (0.01)."""
    return round(1 / imbalance_factor(text))


def print_grid(runs, paper, args):
    try:
        grids = results_grid(runs, paper, args.imbalance)
    except ReportError as error:
        print(f"report.py: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(grid_markdown(grids, data_note(args.runs_dirs), paper)).rstrip("\n"))
    return 0


def main(argv=None):
    parser = OneLineParser(prog="report.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dirs", nargs="+", metavar="runs_dir",
                        help="folders searched recursively for result.json files; a cell pools its runs across them")
    parser.add_argument("--table", nargs="+", choices=("table1", "table2", "table3", "table4", "table5", "table6",
                                                       STUDY, "all"), default=["all"],
                        help=f"one or more; '{STUDY}': the meta-step study (runs under a folder named {STUDY}/), not "
                        "in the paper; 'all': every table and the study")
    parser.add_argument("--imbalance", type=imbalance_ratio, nargs="+", default=None,
                        help="show only these imbalances, as ratios (100) or factors (0.01) alike")
    parser.add_argument("--format", choices=("markdown", "csv", "latex", "grid"), default="markdown",
                        help="grid: one markdown table of every CIFAR-10-LT row and imbalance, ours beside the paper's")
    parser.add_argument("--all", action="store_true", help="the paper's whole grid, 'missing' where no run is")
    args = parser.parse_args(argv)
    missing = next((folder for folder in args.runs_dirs if not Path(folder).is_dir()), None)
    if missing is not None:
        print(f"report.py: error: {missing} is not a folder of runs", file=sys.stderr)
        return 2
    if args.format == "grid" and (args.table != ["all"] or args.all):
        print("report.py: error: --format grid has its own rows and shows them all; drop --table and --all",
              file=sys.stderr)
        return 2
    paper = json.loads(PAPER.read_text())
    runs = load_runs(args.runs_dirs)
    study = [r for r in runs if "study" in r]
    runs = [r for r in runs if "study" not in r]
    if args.format == "grid":
        return print_grid(runs, paper, args)
    every = "all" in args.table
    names = sorted(paper["tables"]) if every else [name for name in args.table if name != STUDY]
    if args.imbalance:
        study = [r for r in study if r["imbalance"] in args.imbalance]
    out, rows = [], []
    try:
        for name in names:
            spec = paper["tables"][name]
            if spec.get("kind") == "large-scale":
                grids = select_large_scale(spec, name, runs, args.all)
            else:
                others, extras = rows_elsewhere(paper, name)
                grids = select(spec, name, runs, others, args.imbalance, args.all, extras)
            if args.format == "markdown":
                out += markdown(spec, grids)
            elif args.format == "latex":
                out += latex(spec, grids)
            else:
                rows += list(csv_rows(name, spec, grids))
    except ReportError as error:
        print(f"report.py: error: {error}", file=sys.stderr)
        return 2
    if args.format == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([CSV_HEADER, *rows])
        print(buffer.getvalue(), end="")
        return 0
    if args.format == "markdown" and (every or STUDY in args.table):
        out += study_markdown(study)
    comment = "% " if args.format == "latex" else ""
    extra = f" and {len(study)} run{'s' * (len(study) != 1)} of the meta-step study" if study else ""
    print(f"{comment}{len(runs)} runs{extra} under {', '.join(args.runs_dirs)}. Paper numbers: {paper['source']}.\n")
    print("\n".join(out) if out else f"{comment}No run belongs to the tables asked for (--all shows the empty grid).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
