"""The plan of a table sweep (tools/run_table.py): its trainings, which first phases they share, how long
they take, and what of them is already done (here, or committed under --reuse: tools/committed.py).

A job's ``state``: "new", "interrupted" (resumed from its checkpoint), "finished" (its result or first phase is
here), "reused" (a committed one under --reuse has its flags: not trained; a reused first phase is branched from
where it lies) or "unneeded" (a first phase not trained yet whose runs are all done).
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import MetaSAug_CE_train  # noqa: E402
import MetaSAug_LDAM_train  # noqa: E402
import cifar_flags  # noqa: E402
import timing  # noqa: E402
from checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from cli import check_resume, duration, flag_clashes  # noqa: E402
from data_utils import CIFAR_NUM_CLASSES, cifar_class_counts  # noqa: E402
from methods import CE_SCRIPT, LDAM_SCRIPT, METHODS, ROWS, TABLES  # noqa: E402
from tools import sweep  # noqa: E402

LOSSES = {CE_SCRIPT: MetaSAug_CE_train.LOSSES, LDAM_SCRIPT: MetaSAug_LDAM_train.LOSSES}
LAM = {"cifar10": 0.25, "cifar100": 0.75}  # the released default and the released CIFAR-100 command


class PlanError(ValueError):
    """A sweep that cannot start as asked; the message says why and what to do."""


@dataclass
class Job:
    """One training process of the sweep."""
    name: str
    script: str
    flags: list          # the training flags, without --resume
    args: argparse.Namespace  # the flags as the training script parses them
    kind: str            # "first phase" (--first_phase_only), "branch" (--init_from) or "scratch"
    rows: tuple          # the row stems it serves
    first_phase: "Job" = None  # the first-phase job a branch starts from
    seconds: float = 0.0  # estimated duration
    state: str = "new"   # see the module's docstring
    source: Path = None  # the committed folder a reused job is
    export_to: Path = None  # where --export writes it once finished
    exported: bool = False  # export_to holds it already

    @property
    def after(self):
        """The name of the first-phase job a branch waits for; None for a branch of a committed first phase."""
        first = self.first_phase
        return None if first is None or first.state == "reused" else first.name

    @property
    def trains(self):
        return self.state in ("new", "interrupted")

    @property
    def exports(self):
        """Whether --export has still to write it (it trains in this sweep, or has)."""
        return self.export_to is not None and not self.exported and self.state in ("new", "interrupted", "finished")

    @property
    def pending(self):
        """Whether this sweep has anything left to do for it: train it, or export it."""
        return self.trains or self.exports

    @property
    def checkpoint(self):
        return Path(self.args.checkpoint_dir) / f"{self.name}_ckpt.pth.tar"

    @property
    def phase1(self):
        return Path(self.args.checkpoint_dir) / f"{self.name}_phase1.pth.tar"

    @property
    def result(self):
        return Path(self.args.out_dir) / "result.json"

    @property
    def console(self):
        """Where the job's console output goes when several jobs run at once."""
        return Path(self.args.out_dir) / "console.log"

    def refresh(self):
        """Read the job's state again from its files as it is about to start (another process may have trained
        it since the plan was made); None, or why it cannot start."""
        try:
            mark_progress([self])
        except PlanError as error:
            return f"run_table.py: error: {error}"
        return None

    def command(self):
        resume = ["--resume", str(self.checkpoint)] if self.state == "interrupted" else []
        return [sys.executable, str(REPO / self.script), *self.flags, *resume]


def training_args(script, flags):
    """The flags as ``script`` parses them, or a PlanError with argparse's message."""
    parser = cifar_flags.build_parser(script, "", LOSSES[script])

    def refuse(status=0, message=None):
        raise PlanError(f"{script} refuses the training flags: {(message or '').strip()}")

    parser.exit = refuse
    return cifar_flags.parse_with_recipe(parser, flags)


def first_phase_key(script, args):
    """Runs with equal keys compute the same first phase (see cifar_flags.check_init_from)."""
    if not 1 <= args.meta_start < args.epochs:
        return None
    base = getattr(args, "loss", LOSSES[script][0])
    return (cifar_flags.first_phase_loss(args.method, base, args.beta, args.max_m, args.gamma),
            *(repr(getattr(args, k)) for k in cifar_flags.PHASE1_MUST_MATCH))


def seconds_for(args, first_epoch, end_epoch, throughput):
    """Training and evaluation time of 0-based epochs [first_epoch, end_epoch) at the measured images/s."""
    images = sum(cifar_class_counts(args.dataset, args.imb_factor, args.num_meta, args.subset))
    if args.max_train_batches:
        images = min(images, args.max_train_batches * args.batch_size)
    test_images = 10000 if not args.max_test_batches else min(10000, args.max_test_batches * args.test_batch_size)
    second = throughput["metasaug"] if METHODS[args.method].meta_step else throughput["plain"]
    return timing.estimated_seconds(args, first_epoch, end_epoch, (images / throughput["plain"], images / second),
                                     test_images / throughput["evaluation"])


def plan(args, throughput):
    """The sweep's jobs in the order a single device runs them: each first phase right before its branches."""
    table = TABLES[args.table]
    dataset = table.dataset
    rows = [ROWS[stem] for stem in table.stems if args.rows is None or stem in args.rows]
    folder = Path(args.out_root) / args.table
    jobs = []
    for imb in args.imb or table.imb_factors:
        for seed in args.seeds:
            setting = f"imb{imb}_seed{seed}"
            runs = []
            for row in rows:
                name = f"{args.table}_{dataset}_{row.stem}_{setting}"
                run_flags = row.flags() + ["--dataset", dataset, "--num_classes", str(CIFAR_NUM_CLASSES[dataset]),
                                     "--imb_factor", str(imb), "--seed", str(seed), "--lam", str(LAM[dataset]),
                                     "--device", args.device, "--data_root", args.data_root or f"data/{dataset}",
                                     "--save_name", name, "--out_dir", str(folder / name),
                                     "--checkpoint_dir", str(folder / "checkpoints"), *args.extra]
                runs.append(Job(name, row.script, run_flags, training_args(row.script, run_flags), "scratch",
                                (row.stem,)))
            groups = {}
            for run in runs:
                key = first_phase_key(run.script, run.args) if args.share else None
                groups.setdefault(key if key is not None else run.name, []).append(run)
            for members in groups.values():
                if len(members) > 1 or (args.share and args.reuse and splits(members[0])):
                    jobs.append(first_phase_job(members, folder, setting))
                    for run in members:
                        branch(run, jobs[-1], jobs[-1].phase1)
                jobs += members
    for job in jobs:
        start = job.args.meta_start if job.kind == "branch" else 0
        end = job.args.meta_start if job.kind == "first phase" else job.args.epochs
        job.seconds = seconds_for(job.args, start, end, throughput) if throughput else 0.0
    return jobs


def splits(run):
    """Whether ``run`` alone is worth a first-phase job under --reuse: its second phase trains otherwise than its
    first, so a committed first phase of its flags can stand for its first 160 epochs."""
    return first_phase_key(run.script, run.args) is not None and METHODS[run.args.method].second_phase


def branch(run, first_phase, phase1):
    """Make ``run`` start from ``phase1``, the end of ``first_phase`` (trained by this sweep, or committed)."""
    own = run.flags[:-2] if run.kind == "branch" else run.flags  # without the --init_from given before
    run.kind, run.first_phase = "branch", first_phase
    run.flags = own + ["--init_from", str(phase1)]
    run.args = training_args(run.script, run.flags)


def first_phase_job(members, folder, setting):
    """The job that trains the shared first phase: the first member's flags, stopping at --meta_start."""
    lead = members[0]
    name = f"{lead.name[:-len(setting)]}first_phase_{setting}"
    renamed = {lead.name: name, str(folder / lead.name): str(folder / name)}
    flags = [renamed.get(f, f) for f in lead.flags] + ["--first_phase_only"]
    return Job(name, lead.script, flags, training_args(lead.script, flags), "first phase",
               tuple(stem for run in members for stem in run.rows))


def mark_progress(jobs):
    """Set each job's state from what its files say (a reused job is left alone); a PlanError where they belong
    to other flags."""
    for job in jobs:
        if job.state == "reused":
            continue
        if job.kind == "first phase" and job.phase1.is_file():
            job.state = "finished"
        elif job.kind != "first phase" and job.result.is_file():
            config = json.loads(job.result.read_text()).get("config", {})
            clashes = flag_clashes(job.args, config, cifar_flags.RESUME_MUST_MATCH)
            if clashes:
                raise PlanError(f"{job.result} was written with other flags ({'; '.join(clashes)}); move it away "
                                f"or choose another --out_root")
            job.state = "finished"
        elif job.checkpoint.is_file():
            try:
                check_resume(argparse.Namespace(**{**vars(job.args), "resume": job.checkpoint}),
                             load_checkpoint(job.checkpoint), cifar_flags.RESUME_MUST_MATCH, job.script)
            except CheckpointError as error:
                raise PlanError(str(error)) from None
            job.state = "interrupted"


def mark_unneeded(jobs):
    """A first phase not trained yet none of whose runs needs anything of it (they are done, or reused) is not
    trained."""
    for job in jobs:
        if job.kind == "first phase" and job.trains and not any(run.pending for run in jobs if run.first_phase is job):
            job.state = "unneeded"


def summary(args, jobs, throughput, device, slots=1):
    """The plan in a few lines: what runs, what is shared, how long, what is already done."""
    first = [j for j in jobs if j.kind == "first phase"]
    branches = [j for j in jobs if j.kind == "branch"]
    scratch = [j for j in jobs if j.kind == "scratch"]
    runs = len(branches) + len(scratch)
    table = TABLES[args.table]
    hardware = "GPU" if device == "cuda" else "CPU"
    lines = [f"{args.table} ({table.dataset}): {runs} runs from {len(jobs)} trainings ({len(first)} shared first "
             f"phases), imbalance {' '.join(map(str, args.imb or table.imb_factors))}, seeds "
             f"{' '.join(map(str, args.seeds))}; results in {Path(args.out_root) / args.table}"]
    if throughput:
        total = sum(j.seconds for j in jobs if j.trains)
        alone = sum(seconds_for(j.args, 0, j.args.epochs, throughput) for j in branches + scratch)
        lines.append(f"  shared first phases: {len(first)} ({duration(sum(j.seconds for j in first))}), each "
                     f"trained once for the rows branching from it: "
                     + ("; ".join(sorted({'+'.join(j.rows) for j in first})) or "none"))
        lines.append(f"  second phases branched from them: {len(branches)} "
                     f"({duration(sum(j.seconds for j in branches))})")
        lines.append(f"  runs from scratch: {len(scratch)} ({duration(sum(j.seconds for j in scratch))})")
        saved = alone - sum(j.seconds for j in jobs)
        at_once = "one training after another" if slots == 1 else f"up to {slots} at once (the sweep itself shorter)"
        lines.append(f"  about {duration(total)} of {hardware} time left to train ({hardware}-hours of one training "
                     f"per {hardware}), {at_once}; without shared first phases {duration(alone)} in all (sharing "
                     f"saves {duration(saved)}); at {throughput['plain']:.0f} plain, {throughput['metasaug']:.0f} "
                     f"MetaSAug and {throughput['evaluation']:.0f} evaluation images/s measured on "
                     f"{throughput['machine']}")
    else:
        lines.append(f"  {len(branches)} branches, {len(scratch)} runs from scratch; no throughput measured for "
                     f"device '{device}' yet, so no time estimate")
    every = jobs[0].args.eval_every if jobs else 1
    lines.append("  evaluation: every epoch (released)" if every == 1 else
                 f"  evaluation: every {every} first-phase epochs (--eval_every {every}), every second-phase "
                 f"epoch and the last; 'best epoch' is over those")
    count = {state: sum(j.state == state for j in jobs) for state in ("finished", "interrupted", "new", "reused",
                                                                       "unneeded")}
    lines.append(f"  progress: of the {len(jobs)} trainings {count['finished']} finished (skipped), "
                 f"{count['interrupted']} interrupted (resumed from their checkpoints), {count['new']} to start"
                 + (f"; {count['reused']} committed under --reuse (not trained)" if count["reused"] else "")
                 + (f"; {count['unneeded']} first phases not needed (their runs are done)" if count["unneeded"]
                    else ""))
    return lines


def base_command(args, python=None):
    """The run_table.py command line of this sweep, without what only this invocation needs: what a
    scheduler runs, with ``--run NAME``, for each job. With ``python`` (an emitted sweep), the interpreter
    by that name and the script relative to the repository, where the job starts: nothing of this machine."""
    script = [python, "tools/run_table.py"] if python else [sys.executable, str(REPO / "tools" / "run_table.py")]
    command = [*script, args.table, "--seeds", *map(str, args.seeds), "--device", args.device, "--out_root",
               args.out_root]
    for flag, value in (("--imb", args.imb), ("--rows", args.rows)):
        if value:
            command += [flag, *map(str, value)]
    if args.data_root:
        command += ["--data_root", args.data_root]
    if args.reuse:
        command += ["--reuse", *args.reuse]
    if args.export:
        command += ["--export", args.export]
    if not args.share:
        command.append("--no-share")
    return command + (["--", *args.extra] if args.extra else [])


def run_one(jobs, name, device, finish=None):
    """Run the job ``name`` alone (what each scheduler task does): skip it if done, resume it if interrupted,
    then ``finish`` it (--export); refuse it while its first phase has not finished (or, with --export, is not
    exported yet, which its branches' exports name)."""
    job = next((j for j in jobs if j.name == name), None)
    if job is None:
        raise PlanError(f"--run {name}: no such run in this sweep (see --verbose for the names)")
    first = job.first_phase if job.after else None
    if first is not None and first.pending:
        raise PlanError(f"--run {name} branches from {first.name}, whose first phase has not finished"
                        f"{' or is not exported yet' if first.export_to else ''}; run it first")
    if not job.pending:
        print(f"{name} has finished already{' (committed under --reuse)' * (job.state == 'reused')}: nothing to "
              f"do", flush=True)
        return 0
    if not job.trains:
        problem = finish(job)
        if problem:
            raise PlanError(problem)
        return 0
    return sweep.run_local([job], 1, device, duration, done=[first.name] if first else [], finish=finish)
