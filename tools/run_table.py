"""Run every row of one of the paper's CIFAR tables that this repository can produce.

    python tools/run_table.py table1 [--seeds 1 2 3] [--imb 0.01 | 100 ...] [--device cuda] [--dry-run]
        [--reuse results/cifar10_jpeg] [--export results/cifar10_jpeg] [training flags]

Rows whose epochs before ``--meta_start`` compute the same thing (same data, seed, schedule and
first-phase loss: e.g. CE, MetaSAug-CE, MetaSAug-focal and MetaSAug-LDAM all train plain
cross-entropy there) share that first phase: it is trained once (``--first_phase_only``) and the
rows branch from it with ``--init_from``, ending bit-identical to training each from scratch.

Prints the plan first (runs, hours per phase, what is shared, what is already done), then runs.
Re-running the same command continues a sweep: a run whose ``result.json`` matches its flags is
skipped, an interrupted one resumes from its checkpoint. Ctrl-C stops after the current run has
written its checkpoint. Results go to ``<out_root>/<table>/<run name>/`` with checkpoints in
``<out_root>/<table>/checkpoints``; ``python tools/report.py <out_root>/<table>`` summarises them.

``--reuse DIR`` builds on committed results (tools/committed.py): a first phase committed there with the
planned one's flags is branched from where it lies, a run committed there with a planned run's flags is done;
unless the training flags name one, the sweep evaluates as the committed runs did (their ``--eval_every``), so
that its runs pool with them in ``tools/report.py DIR <out_root>/<table>``. ``--export DIR`` writes each
training that finishes into DIR in the committed layout (tools/export_run.py), ready to commit. The imbalance
is given as a factor (0.02) or a ratio (50) alike. ``--data_root`` must exist here before a local sweep starts;
an emitted one (``--emit``) only says that it must exist where its jobs run.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# no torch: --help answers at once
from cli import HelpFormatter, OneLineParser, add_device_flag, imbalance_factor  # noqa: E402
from methods import TABLES  # noqa: E402


def tables_help():
    """Each table's dataset, imbalance factors and row stems (what --rows keeps)."""
    return " ".join(f"{name} ({table.dataset}, imbalance {' '.join(map(str, table.imb_factors))}): "
                    f"{' '.join(table.stems)}." for name, table in TABLES.items())


def parse_args(argv):
    p = OneLineParser(prog="run_table.py", description=__doc__.splitlines()[0], formatter_class=HelpFormatter,
                      allow_abbrev=False,
                      epilog=f"Rows per table: {tables_help()} Other flags, and everything after a bare --, go to "
                             f"every training (e.g. --epochs 20 --meta_start 16 --lr_milestones 16 18, or "
                             f"--eval_every 5).")
    p.add_argument("table", choices=tuple(TABLES))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the paper averages 3 runs")
    p.add_argument("--imb", type=imbalance_factor, nargs="+", default=None,
                   help="imbalances, as factors (0.02) or ratios (50) alike (default: the table's)")
    p.add_argument("--rows", nargs="+", default=None, help="run-name stems to keep (default: all the table's rows, "
                                                          "listed below)")
    add_device_flag(p, "auto: CUDA where this machine has it; an emitted SLURM sweep asks for GPUs unless cpu")
    p.add_argument("--data_root", default=None, help="default data/<dataset>")
    p.add_argument("--out_root", default="runs", help="results go to <out_root>/<table>/<run name>")
    p.add_argument("--reuse", nargs="+", metavar="DIR", default=None,
                   help="committed results trees (e.g. results/cifar10_jpeg): a first phase there with the planned "
                        "one's flags is branched from instead of trained, a run there with a planned run's flags is "
                        "done; the sweep's --eval_every defaults to theirs")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="write each training that finishes into DIR in the committed layout "
                        "(DIR/imb<ratio>/<row>_seed<S>, first phases DIR/imb<ratio>/first_phase_seed<S>) with "
                        "tools/export_run.py, never over an existing folder")
    p.add_argument("--no-share", dest="share", action="store_false",
                   help="train every run from scratch instead of branching from shared first phases")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.add_argument("--verbose", action="store_true", help="also print every command")
    p.add_argument("--jobs", type=int, default=None,
                   help="trainings at once on this machine: --runs_per_gpu per visible GPU on CUDA (default: all "
                        "of them), or an equal share of the cores each on the CPU (default 1)")
    p.add_argument("--runs_per_gpu", type=int, default=1,
                   help="trainings sharing one GPU, the CPU threads split between all (a ResNet-32 at batch 100 "
                        "leaves most of a GPU idle: seven shared an H200 at about 3.2x the throughput of one)")
    p.add_argument("--emit", nargs="+", metavar="KIND [DIR]",
                   help="instead of training: 'slurm DIR' writes job-array scripts and submit.sh to DIR; "
                        "'commands' prints one command per run (first phases first) for any other scheduler")
    p.add_argument("--run", default=None, metavar="NAME",
                   help="run this one job of the sweep (what each scheduler task does): skipped if finished, "
                        "resumed if interrupted")
    slurm = p.add_argument_group("SLURM (with --emit slurm; nothing in the scripts names this machine)")
    slurm.add_argument("--gpus_per_task", type=int, default=None, help="default: 1, or 0 with --device cpu")
    slurm.add_argument("--cpus_per_task", type=int, default=4, help="CPU cores of each task (its training's threads)")
    slurm.add_argument("--time", default="24:00:00", help="time limit of each task")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--mem", default=None, help="memory per task, e.g. 16G")
    slurm.add_argument("--signal_seconds", type=int, default=300,
                       help="SIGTERM this long before the time limit: the task checkpoints and requeues itself")
    slurm.add_argument("--python", default="python", help="the interpreter each task runs, as the nodes name it")
    slurm.add_argument("--workdir", default=None,
                       help="the repository on the nodes (default: where submit.sh runs sbatch, the repository "
                            "the sweep was emitted from)")
    slurm.add_argument("--setup", default=None,
                       help="a shell line each task runs first, e.g. 'source ~/venv/bin/activate' or "
                            "'module load cuda'")
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, unknown = p.parse_known_args(argv[:split])
    args.extra = unknown + argv[split + 1:]
    return args


def main(argv=None):
    args = parse_args(argv)
    from tools import committed, plan, sweep  # torch and the training code from here on
    from cli import duration
    from timing import measured_throughput
    try:
        if args.emit and (args.emit[0] not in ("slurm", "commands") or len(args.emit) != (2 if args.emit[0] ==
                                                                                               "slurm" else 1)):
            raise plan.PlanError("--emit takes 'slurm DIR' or 'commands'")
        reused = committed.load(args.reuse, TABLES[args.table].dataset) if args.reuse else None
        if reused is not None:
            args.extra = committed.with_protocol(args.extra, reused)
        data = data_root_line(args)
        finish = committed.export if args.export else None
        if args.emit:  # for other machines: nothing here is looked at, neither GPUs nor cores
            device = "cpu" if args.device == "cpu" else "cuda"
            throughput = measured_throughput(device, args.cpus_per_task if device == "cpu" else None)
            jobs = sweep_jobs(args, throughput, reused)
            if args.emit[0] == "commands":
                print("\n".join(sweep.emit_commands(plan.base_command(args, args.python), jobs)))
                return 0
            resources = dict(gpus_per_task=args.gpus_per_task if args.gpus_per_task is not None else
                             int(device == "cuda"), cpus_per_task=args.cpus_per_task, time=args.time,
                             partition=args.partition, mem=args.mem, signal_seconds=args.signal_seconds,
                             workdir=args.workdir, setup=args.setup)
            written = sweep.emit_slurm(args.emit[1], plan.base_command(args, args.python), jobs, resources)
            print("\n".join(plan.summary(args, jobs, throughput, device) + committed.summary(args, jobs, reused)
                            + [data]))
            print(f"wrote {', '.join(str(p) for p in written)}; submit with: bash {written[-1]}")
            return 0
        device = args.device if args.device != "auto" else "cuda" if sweep.visible_gpus() else "cpu"
        per_gpu = args.runs_per_gpu if device == "cuda" else 1
        slots = args.jobs if args.jobs is not None else (len(sweep.visible_gpus()) * per_gpu if device == "cuda"
                                                         else 1)
        problem = sweep.check_slots(device, slots, per_gpu)
        if problem:
            raise plan.PlanError(problem)
        throughput = measured_throughput(device, sweep.cpu_threads(slots) if device == "cpu" else None)
        jobs = sweep_jobs(args, throughput, reused)
        if args.run:
            return plan.run_one(jobs, args.run, device, finish)
    except (plan.PlanError, ValueError) as error:
        print(f"run_table.py: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(plan.summary(args, jobs, throughput, device, slots) + committed.summary(args, jobs, reused)
                    + ([data] if data else [])), flush=True)
    if args.verbose:
        for job in jobs:
            print(f"[{job.kind}, {job.state}] " + " ".join(job.command()[1:]))
    if args.dry_run:
        return 0
    for job in (j for j in jobs if j.exports and not j.trains):  # finished before, not exported yet
        problem = finish(job)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    return sweep.run_local(jobs, slots, device, duration, per_gpu=per_gpu, finish=finish)


def sweep_jobs(args, throughput, reused):
    """The sweep's jobs, marked: what is committed (--reuse), done or begun here, not needed, exported."""
    from tools import committed, plan
    jobs = plan.plan(args, throughput)
    if reused is not None:
        committed.reuse(jobs, reused)
    plan.mark_progress(jobs)
    if args.export:
        committed.mark_exported(jobs, args.export)
    plan.mark_unneeded(jobs)
    # A scheduler's task (--run) answers for its own job only: another's export may be under way meanwhile.
    committed.check_destinations([job for job in jobs if args.run in (None, job.name)])
    return jobs


def data_root_line(args):
    """--data_root must exist where the trainings run. Here: a PlanError if it does not (a --dry-run only says
    so); for an emitted sweep the plan says where it must exist. Returns the plan's line about it, or None."""
    from tools.plan import PlanError
    root = Path(args.data_root or f"data/{TABLES[args.table].dataset}")
    here = root.is_dir()
    if args.emit:
        return (f"  data: --data_root {root} must exist where the jobs run (relative paths: in the repository "
                f"there){'' if here else '; it does not on this machine'}")
    if here:
        return None
    if args.dry_run:
        return f"  data: --data_root {root} does not exist here; extract the dataset there before training"
    raise PlanError(f"--data_root {root} does not exist; extract the dataset there or pass --data_root DIR (--emit "
                f"writes the sweep for machines that have it)")


if __name__ == "__main__":
    sys.exit(main())
