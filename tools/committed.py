"""A table sweep (tools/run_table.py) beside committed results trees such as results/cifar10_jpeg, whose layout
is DIR/imb<ratio>/<row stem>_seed<S> for a run and DIR/imb<ratio>/first_phase_seed<S> for the plain
cross-entropy first phase that CE and the augmented rows share (<lead row stem>_first_phase_seed<S> for
another, e.g. the LDAM rows' under Cao et al.'s recipe).

- ``--reuse DIR ...`` (``load``, ``reuse``): a planned first phase that a committed phase1.pth matches
  (cifar_flags.check_init_from: the flags the first phase depends on, its loss, its end) is not trained: its
  branches start from the committed file (where the trainer checks the long-tail subset too); a planned run that
  a committed result.json matches (cifar_flags.RESUME_MUST_MATCH: every flag but paths and devices, the
  evaluation protocol included) is done. Folders of the meta-step study are no table's runs and are left out.
- ``--export DIR`` (``mark_exported``, ``check_destinations``, ``export``): each job of the sweep that finishes
  is written to DIR in that layout with tools/export_run.py (a branch naming the committed first phase it
  started from), its NOTES.txt (the sweep's launch and exit lines) ending with a 'time:' line. A folder that
  exists is never written over: one holding this very job counts as exported, another stops the sweep before
  it starts.
"""
import argparse
import json
from collections import namedtuple
from pathlib import Path

import cifar_flags
from checkpoint import CheckpointError, load_checkpoint
from cli import flag_clashes
from tools import export_run
from tools.plan import PlanError, branch
from tools.report import STUDY

SHARED_FIRST_PHASE = "cross-entropy"  # cifar_flags.first_phase_loss of what CE and the augmented rows train first
Found = namedtuple("Found", "folder config checkpoint")  # checkpoint: a first phase's, without its tensors


def load(roots, dataset):
    """The committed first phases and runs of ``dataset`` under ``roots`` (lists of Found), in the order given."""
    first_phases, runs = [], []
    for root in map(Path, roots):
        if not root.is_dir():
            raise PlanError(f"--reuse {root} is not a folder; pass a results tree such as results/cifar10_jpeg")
        for path in (p for p in sorted(root.rglob("phase1.pth")) if not in_study(p, root)):
            checkpoint = {k: v for k, v in load_checkpoint(path).items() if k not in ("state_dict", "optimizer")}
            if checkpoint.get("config", {}).get("dataset") == dataset:
                first_phases.append(Found(path.parent, checkpoint["config"], checkpoint))
        for path in (p for p in sorted(root.rglob("result.json")) if not in_study(p, root)):
            config = json.loads(path.read_text()).get("config")
            if isinstance(config, dict) and config.get("dataset") == dataset:
                runs.append(Found(path.parent, config, None))
    return first_phases, runs


def in_study(path, root):
    """Whether ``path`` lies in a folder of the meta-step study (its arms are no table's runs)."""
    return STUDY in path.relative_to(root).parts[:-1]


def protocols(committed):
    """The --eval_every values of the committed first phases and runs."""
    return sorted({found.config.get("eval_every", 1) for found in (*committed[0], *committed[1])})


def with_protocol(extra, committed):
    """The training flags ``extra``, with the committed runs' --eval_every when they all share one and the flags
    name none (a sweep's runs then pool with them); a PlanError where they differ."""
    given = any(word.split("=")[0] in ("--eval_every", "--eval-every") for word in extra)
    values = protocols(committed)
    if given or not values:
        return extra
    if len(values) > 1:
        raise PlanError(f"the runs under --reuse were evaluated with --eval_every {' and '.join(map(str, values))}; "
                        f"pass --eval_every N (the cells of another protocol are trained again)")
    return [*extra, "--eval_every", str(values[0])]


def matching_first_phase(job, first_phases):
    """The first committed first phase ``job`` (a first-phase job) may be replaced by, or None."""
    for found in first_phases:
        args = argparse.Namespace(**{**vars(job.args), "init_from": str(found.folder / "phase1.pth")})
        try:
            cifar_flags.check_init_from(args, found.checkpoint)
        except CheckpointError:
            continue
        return found.folder
    return None


def matching_run(job, runs):
    """The first committed run with ``job``'s flags, or None."""
    return next((found.folder for found in runs
                 if not flag_clashes(job.args, found.config, cifar_flags.RESUME_MUST_MATCH)), None)


def reuse(jobs, committed):
    """Mark the jobs that committed ones replace "reused"; the branches of a reused first phase start from its
    committed phase1.pth."""
    first_phases, runs = committed
    for job in jobs:
        job.source = (matching_first_phase(job, first_phases) if job.kind == "first phase"
                      else matching_run(job, runs))
        if job.source is not None:
            job.state = "reused"
    for job in jobs:
        if job.kind == "branch" and job.first_phase.state == "reused":
            branch(job, job.first_phase, job.first_phase.source / "phase1.pth")


def destination(root, job):
    """Where --export writes ``job``: the committed layout under ``root``."""
    args = job.args
    folder = Path(root) / f"imb{round(1 / args.imb_factor)}"
    if job.kind != "first phase":
        return folder / f"{job.rows[0]}_seed{args.seed}"
    loss = cifar_flags.first_phase_loss(args.method, args.loss, args.beta, args.max_m, args.gamma)
    prefix = "" if loss == SHARED_FIRST_PHASE else f"{job.rows[0]}_"
    return folder / f"{prefix}first_phase_seed{args.seed}"


def holds(dest, job):
    """Whether ``dest`` holds this job's own output already (exported before)."""
    if job.kind != "first phase":
        return job.result.is_file() and (dest / "result.json").read_bytes() == job.result.read_bytes()
    if not (job.phase1.is_file() and (dest / "phase1.pth").is_file()):
        return False
    return load_checkpoint(dest / "phase1.pth")["history"] == load_checkpoint(job.phase1)["history"]


def mark_exported(jobs, root):
    """Give each job not reused its --export folder, and say which hold it already."""
    for job in jobs:
        if job.state != "reused":
            job.export_to = destination(root, job)
            job.exported = job.export_to.exists() and holds(job.export_to, job)


def check_destinations(jobs):
    """A PlanError where a folder the sweep would export to holds something else."""
    taken = [job for job in jobs if job.exports and job.export_to.exists()]
    if taken:
        job = taken[0]
        raise PlanError(f"--export: {job.export_to} exists and holds another "
                        f"{'first phase' if job.kind == 'first phase' else 'run'} than {job.name} (other flags, or "
                        f"another sweep's); choose another --export folder, or flags that match it (--reuse "
                        f"{job.export_to.parent.parent} counts one of the same flags as done)")


def export(job):
    """Write the finished ``job`` to its --export folder; None, or what went wrong in one line."""
    first = job.first_phase
    first_dest = None if first is None else first.source if first.state == "reused" else first.export_to
    checkpoint = job.phase1 if job.kind == "first phase" else job.checkpoint
    try:
        dest = export_run.export(job.args.out_dir, checkpoint, job.export_to, first_phase=first_dest)
    except (CheckpointError, OSError) as error:
        return f"run_table.py: error: --export of {job.name} to {job.export_to} failed: {error}"
    with open(dest / "NOTES.txt", "a") as notes:
        notes.write(time_line(job, first_dest) + "\n")
    job.exported = True
    print(f"== exported {job.name} to {dest}", flush=True)
    return None


def time_line(job, first_dest):
    """'time: epochs a-b on the CPU, h CPU-hours; ...' of the epochs the job trained itself (wall time of
    their training and evaluation, from its history), and whose the epochs before them are."""
    if job.kind == "first phase":
        history = [dict(h, epoch=h["epoch"] + 1) for h in load_checkpoint(job.phase1)["history"]]  # 0-based there
    else:
        history = json.loads(job.result.read_text())["history"]
    start = job.args.meta_start if job.kind == "branch" else 0
    spans = "; ".join(f"{epochs(first, last)} on the {kind}, {seconds / 3600:.2f} {kind}-hours"
                      for first, last, kind, seconds in device_spans(history[start:]))
    before = f"; {epochs(1, start)} are the committed first phase's ({first_dest})" if first_dest else ""
    return f"time: {spans} (wall time of training and evaluation){before}"


def epochs(first, last):
    """'epoch 3' or 'epochs 1-2'."""
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def device_spans(history):
    """(first epoch, last epoch, "CPU" or "GPU", seconds) of each stretch of consecutive epochs on one kind of
    device."""
    spans = []
    for entry in history:
        kind = "GPU" if entry.get("device", "cpu").startswith("cuda") else "CPU"
        seconds = entry.get("train_time_s", 0.0) + entry.get("eval_time_s", 0.0)
        if spans and spans[-1][2] == kind:
            spans[-1] = (spans[-1][0], entry["epoch"], kind, spans[-1][3] + seconds)
        else:
            spans.append((entry["epoch"], entry["epoch"], kind, seconds))
    return spans


def summary(args, jobs, committed):
    """The plan's lines on what --reuse found, the protocol, and where --export writes."""
    lines = []
    if committed is not None:
        reused = [j for j in jobs if j.state == "reused"]
        first = sum(j.kind == "first phase" for j in reused)
        values = protocols(committed)
        lines.append(f"  reused from {' '.join(args.reuse)}: {first} first phase{'s' * (first != 1)} (their "
                     f"branches start from the committed phase1.pth), {len(reused) - first} runs (done); the "
                     f"committed runs were evaluated "
                     f"with --eval_every {' and '.join(map(str, values)) or '(none found)'}, this sweep's with "
                     f"--eval_every {jobs[0].args.eval_every if jobs else '?'}")
    if args.export:
        exported = sum(j.exported for j in jobs)
        lines.append(f"  export: each training that finishes to {args.export}/imb<ratio>/<row>_seed<S> (first "
                     f"phases: first_phase_seed<S>), {sum(j.exports for j in jobs)} to write, {exported} there "
                     f"already")
    return lines
