"""Running the jobs of a table sweep (tools/run_table.py): here, several at once, or on a SLURM cluster.

- ``run_local``: up to ``slots`` trainings at once on this machine, each first phase before the branches
  that start from it. On CUDA ``per_gpu`` jobs per visible GPU (``CUDA_VISIBLE_DEVICES``: a ResNet-32 at
  batch 100 leaves most of a GPU idle); the CPU cores are split between the jobs (``OMP_NUM_THREADS``).
  With several slots each job's console output goes to ``<out_dir>/console.log`` and the terminal gets
  one status line per job. Each job's ``<out_dir>/NOTES.txt`` gets a line when it starts (where: host,
  device, threads, torch, SLURM job; the command; the commit) and one when it ends (how), which an
  export (--export) carries into the results tree. A job that another process is training (its run's lock,
  checkpoint.RunLock: a second sweep on the same runs, a resume by hand) waits for that process, and its
  state is read again from its files as it starts, so it is resumed, or counted done, not started afresh.
- ``emit_slurm``: job-array scripts (first phases; the branches, one array per first phase, each waiting
  for its own first phase's task with ``--dependency=afterok:<job>_<task> --kill-on-invalid-dep=yes``, so
  a failed first phase cancels its branches only, which SLURM shows with the reason
  DependencyNeverSatisfied; the runs from scratch, which wait for nothing), each array task a
  ``run_table.py ... --run NAME`` that skips a finished run and resumes an interrupted one, so requeued
  (preempted, or timed out after checkpointing on the pre-limit SIGTERM) tasks continue where they
  stopped. Nothing in them names this machine: paths are relative to the repository on the nodes.
"""
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from checkpoint import RunBusy, RunLock
from cli import EXIT_RESUMABLE, git_commit

EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+) .*\| ETA (.+)$")


class Interrupt:
    """SIGINT/SIGTERM: stop starting jobs; the running trainings get SIGTERM and write their checkpoints."""

    def __init__(self):
        self.signal, self.children = None, []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # Ctrl-C reached them too; a second request is harmless


def cpu_threads(slots):
    """Torch threads each CPU job runs with: an equal share of the cores with several slots; with one, what
    this process runs with (OMP_NUM_THREADS, or torch's default)."""
    if slots > 1:
        return max(1, (os.cpu_count() or 1) // slots)
    import torch
    return torch.get_num_threads()


def slot_environments(device, slots, per_gpu=1):
    """One environment per slot: on CUDA a visible GPU for every ``per_gpu`` slots; an equal share of the
    cores each wherever several slots run."""
    share = str(cpu_threads(slots))
    threads = {} if slots == 1 else {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}
    if device == "cuda":
        gpus = visible_gpus()
        return [{**os.environ, **threads, "CUDA_VISIBLE_DEVICES": gpus[slot // per_gpu]} for slot in range(slots)]
    return [{**os.environ, **threads} for _ in range(slots)]


def visible_gpus():
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return visible.split(",")
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def check_slots(device, slots, per_gpu=1):
    """A one-line reason why ``slots`` jobs cannot run at once here, ``per_gpu`` to a GPU, or None."""
    if per_gpu < 1:
        return f"--runs_per_gpu must be at least 1, got {per_gpu}"
    count = len(visible_gpus()) if device == "cuda" else None
    if count == 0:
        return ("--device cuda, but no GPU is visible here; use --device cpu, or --emit slurm DIR to run the "
                "sweep on a cluster's GPUs")
    if slots < 1:
        return f"--jobs must be at least 1, got {slots}"
    if device == "cuda":
        if slots > count * per_gpu:
            return (f"--jobs {slots} needs {-(-slots // per_gpu)} GPUs at --runs_per_gpu {per_gpu}, but {count} "
                    f"are visible; lower --jobs or raise --runs_per_gpu")
    elif slots > (os.cpu_count() or 1):
        return (f"--jobs {slots} on the CPU would run more threads than the {os.cpu_count()} cores; "
                f"use at most --jobs {os.cpu_count()}")
    return None


def progress_of(job):
    """(epoch line's epoch, epochs, ETA text) from the job's train.log, or None before its first epoch."""
    log = Path(job.args.out_dir) / "train.log"
    if not log.is_file():
        return None
    for line in reversed(log.read_text().splitlines()):
        match = EPOCH_LINE.match(line)
        if match:
            return int(match[1]), int(match[2]), match[3]
    return None


def _eta_seconds(text):
    number, unit = text.split()
    return float(number) * (3600 if unit == "h" else 60)


def run_local(jobs, slots, device, duration, status_every=60.0, done=(), per_gpu=1, finish=None):
    """Train the jobs that need it, up to ``slots`` at once (``per_gpu`` to a GPU); a branch starts once its first
    phase has finished (one of ``jobs``, or named in ``done``). ``finish(job)`` (--export) runs on each job that
    ended well, before its branches start, and returns None or what went wrong, which fails the job. Returns the
    exit code: 0, the first failure's, 128 + signal after Ctrl-C / SIGTERM, or EXIT_RESUMABLE when a training
    passed --stop_after stopped."""
    interrupt = Interrupt()
    environments = slot_environments(device, slots, per_gpu)
    quiet = slots > 1
    pending = [job for job in jobs if job.trains]
    finished = {job.name for job in jobs if not job.trains} | set(done)
    failed, running, stopped = {}, {}, []  # running: slot -> (job, process, log handle)
    last_status = 0.0
    waiting = set()  # jobs another process was training when they were due here
    while pending or running:
        if interrupt.signal is None:
            for slot in [s for s in range(slots) if s not in running]:
                ready, lock = next_job(pending, finished, waiting)
                if ready is None:
                    break
                pending.remove(ready)
                problem = ready.refresh()  # another process may have trained it since the plan
                if problem or not ready.trains:
                    lock.release()
                    if problem:
                        print(problem, file=sys.stderr, flush=True)
                        failed[ready.name] = 2
                        drop_branches(pending, ready.name)
                    else:
                        finished.add(ready.name)
                        print(f"== done {ready.name}: another process finished it" + (
                            " (re-run this sweep to export it if that one did not)" if finish else ""), flush=True)
                    continue
                note(ready, f"launched {ready.name} ({ready.kind}) on {machine(device, environments[slot])}: "
                            f"{shlex.join([ready.script, *ready.command()[2:]])} (commit {git_commit()})")
                running[slot] = _start(ready, environments[slot], quiet, lock)
                interrupt.children = [process for _, process, _ in running.values()]
                print(f"== start {ready.name} ({ready.kind}{', resumed' if ready.state == 'interrupted' else ''})"
                      + (f" on {_slot_name(device, environments[slot])}" if quiet else ""), flush=True)
        time.sleep(0.2 if not quiet else 1.0)
        for slot, (job, process, log) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[slot]
            if log:
                log.close()
            note(job, ending(code))
            problem = finish(job) if code == 0 and finish else None
            if problem:
                print(problem, file=sys.stderr, flush=True)
                code = 2
            if code == 0:
                job.state = "finished"
                finished.add(job.name)
                print(f"== done {job.name}", flush=True)
            elif code == EXIT_RESUMABLE and interrupt.signal is None:  # --stop_after: checkpointed
                stopped.append(job.name)
                print(f"== stopped {job.name} (--stop_after): re-run the same command to continue", flush=True)
                drop_branches(pending, job.name)
            elif interrupt.signal is None:
                failed[job.name] = code
                print(f"{job.name} failed with exit code {code}" + (f"; see {job.console}" if quiet else "")
                      + f": {' '.join(job.command()[1:])}", file=sys.stderr, flush=True)
                drop_branches(pending, job.name)
        if interrupt.signal is not None:
            pending.clear()
        if pending and not running and not any(j.after is None or j.after in finished for j in pending):
            raise RuntimeError(f"{pending[0].name} waits for {pending[0].after}, which is not in this sweep")
        if quiet and running and time.time() - last_status >= status_every:
            last_status = time.time()
            print(status_lines(running, pending, slots, duration), flush=True)
    if interrupt.signal is not None:
        print(f"stopped by signal {interrupt.signal}; the running trainings wrote their checkpoints. Re-run the "
              f"same command to continue the sweep.", file=sys.stderr, flush=True)
        return 128 + interrupt.signal
    if failed:
        return next(iter(failed.values()))
    return EXIT_RESUMABLE if stopped else 0


def next_job(pending, finished, waiting):
    """The first pending job whose first phase has finished and that no other process is training (a second
    sweep on the same runs, a resume by hand), with its run's lock taken for it; says once of each job it
    finds busy that it waits for that process. (None, None) when none can start now."""
    for job in pending:
        if job.after is not None and job.after not in finished:
            continue
        try:
            return job, RunLock(job.args.checkpoint_dir, job.name)
        except RunBusy as busy:
            if job.name not in waiting:
                waiting.add(job.name)
                print(f"== waiting for {job.name}: another process is training it ({busy.holder}); this sweep "
                      f"takes it up when that one ends", flush=True)
    return None, None


def drop_branches(pending, name):
    """A first phase that did not finish here: its branches cannot start."""
    for job in [j for j in pending if j.after == name]:
        pending.remove(job)


def note(job, text):
    """A timestamped line of the job's NOTES.txt, in its out_dir (an export carries it into the results tree)."""
    folder = Path(job.args.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "NOTES.txt", "a") as notes:
        notes.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {text}\n")


def machine(device, environment):
    """Where a job runs, for its NOTES: the host, the GPU or the CPU threads, torch, and the SLURM job if any."""
    import torch
    threads = environment.get("OMP_NUM_THREADS") or str(torch.get_num_threads())
    cores = f"{threads} CPU thread{'s' * (threads != '1')} of {os.cpu_count()} cores ({cpu_model()})"
    if device == "cuda":
        gpu = environment["CUDA_VISIBLE_DEVICES"]
        where = f"GPU {gpu} ({torch.cuda.get_device_name(visible_gpus().index(gpu))}) and {cores}"
    else:
        where = f"the CPU, {cores}"
    task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    slurm = f", SLURM job {task[0]}_{task[1]}" if all(task) else ""
    return f"{platform.node()}: {where}, torch {torch.__version__}{slurm}"


def cpu_model():
    """The CPU's model name as Linux reports it, or the platform's word for it elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "unknown CPU")


def ending(code):
    """How a training ended, for its NOTES."""
    if code == 0:
        return "exited with code 0"
    if code == EXIT_RESUMABLE:
        return f"stopped by --stop_after, checkpoint written (exit code {code}); the same sweep command continues it"
    if code > 128:
        return f"stopped by signal {code - 128}, checkpoint written (exit code {code})"
    return f"killed by signal {-code}" if code < 0 else f"failed with exit code {code}"


def _start(job, environment, quiet, lock):
    """Start the job's training, handing it the run's lock taken for it."""
    environment, descriptors = lock.handed_to(environment)
    log = None
    if quiet:
        Path(job.args.out_dir).mkdir(parents=True, exist_ok=True)
        log = open(job.console, "a")
    try:
        process = subprocess.Popen(job.command(), env=environment, pass_fds=descriptors,
                                   stdout=log, stderr=subprocess.STDOUT if log else None)
    finally:
        lock.close()
    return job, process, log


def _slot_name(device, environment):
    if device == "cuda":
        return f"GPU {environment['CUDA_VISIBLE_DEVICES']}"
    return f"{environment.get('OMP_NUM_THREADS', '?')} CPU threads"


def status_lines(running, pending, slots, duration):
    """One line per running job (epoch, ETA) and the sweep's ETA."""
    lines, remaining = [], []
    for job, _, _ in running.values():
        progress = progress_of(job)
        if progress is None:
            lines.append(f"  {job.name}: starting (about {duration(job.seconds)} planned)")
            remaining.append(job.seconds)
        else:
            epoch, epochs, eta = progress
            lines.append(f"  {job.name}: epoch {epoch}/{epochs}, ETA {eta}")
            remaining.append(_eta_seconds(eta))
    rest = sum(job.seconds for job in pending)
    sweep = max(max(remaining, default=0.0), (sum(remaining) + rest) / slots)
    lines.append(f"  sweep: {len(running)} running, {len(pending)} waiting, about {duration(sweep)} left")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# SLURM and other schedulers
# ---------------------------------------------------------------------------------------------

def job_command(base_command, job):
    """The shell command that runs one job of the sweep (skipping it if finished, resuming it if interrupted):
    ``base_command`` with ``--run NAME`` before the training flags that follow a bare ``--``."""
    split = base_command.index("--") if "--" in base_command else len(base_command)
    return shlex.join([*base_command[:split], "--run", job.name, *base_command[split:]])


def emit_commands(base_command, jobs):
    """The command of every job with something left to do, first phases first."""
    ordered = [j for j in jobs if j.kind == "first phase"] + [j for j in jobs if j.kind != "first phase"]
    return [job_command(base_command, job) for job in ordered if job.pending]


ARRAYS = (("first_phases", "first phase"), ("branches", "branch"), ("scratch", "scratch"))  # file stem, Job.kind


def array_jobs(jobs):
    """{array name: its tasks' jobs} of the jobs with something left to do; the branches grouped by the task of
    the first phase they wait for (those waiting for none first)."""
    lists = {name: [j for j in jobs if j.kind == kind and j.pending] for name, kind in ARRAYS}
    lists["branches"].sort(key=lambda j: (waited_task(j, lists["first_phases"]) is not None,
                                          waited_task(j, lists["first_phases"])))
    return lists


def waited_task(job, first_phases):
    """The index among ``first_phases`` of the task ``job`` waits for, or None (its first phase is done or
    committed)."""
    names = [j.name for j in first_phases]
    return names.index(job.after) if job.after in names else None


def branch_groups(lists):
    """(waited first-phase task or None, first and last branch task index) of each group of branches."""
    groups = []
    for index, job in enumerate(lists["branches"]):
        task = waited_task(job, lists["first_phases"])
        if groups and groups[-1][0] == task:
            groups[-1] = (task, groups[-1][1], index)
        else:
            groups.append((task, index, index))
    return groups


def emit_slurm(folder, base_command, jobs, resources):
    """Write the sweep's SLURM files to ``folder`` (a path relative to the repository, where the emitting
    command runs, or absolute); a ValueError if it holds another sweep or other files. Returns the files
    written."""
    folder = Path(folder)
    arrays = array_jobs(jobs)
    lists = {name: [job_command(base_command, j) for j in members] for name, members in arrays.items()}
    manifest = dict(command=shlex.join(base_command), **lists, resources=resources)
    if folder.exists():
        existing = folder / "sweep.json"
        if not existing.is_file():
            if any(folder.iterdir()):
                raise ValueError(f"--emit folder {folder} holds other files; choose an empty or new folder")
        elif json.loads(existing.read_text())["command"] != manifest["command"]:
            raise ValueError(f"--emit folder {folder} holds another sweep ({existing}); choose another folder")
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    written = [folder / "sweep.json"]
    written[0].write_text(json.dumps(manifest, indent=1) + "\n")
    back = os.path.relpath(Path.cwd().resolve(), folder.resolve())
    submit = ["#!/usr/bin/env bash",
              "# Submit the sweep: the first phases; the branches, each group waiting for its own first phase (a",
              "# failed first phase cancels its branches: Reason=DependencyNeverSatisfied); the runs from scratch.",
              "set -euo pipefail", f'cd "$(dirname "$0")"/{shlex.quote(back)}  # the repository: sbatch runs here',
              f"log={shlex.quote(str(folder / 'logs' / 'submitted.txt'))}  # which job is which, for squeue and sacct"]
    for name, _ in ARRAYS:
        if not lists[name]:
            continue
        (folder / f"{name}.txt").write_text("\n".join(lists[name]) + "\n")
        (folder / f"{name}.sbatch").write_text(_sbatch(name, len(lists[name]), folder, resources))
        written += [folder / f"{name}.txt", folder / f"{name}.sbatch"]
        script = shlex.quote(str(folder / (name + ".sbatch")))
        if name == "branches":
            submit += _submit_branches(arrays, script)
        else:
            submit.append(f"{name}=$(sbatch --parsable {script})")
            submit.append(f'echo "{name.replace("_", " ")}: job ${{{name}%%;*}}" | tee -a "$log"')
    (folder / "submit.sh").write_text("\n".join(submit) + "\n")
    return written + [folder / "submit.sh"]


def _submit_branches(arrays, script):
    """submit.sh's lines for the branches: one array per first phase, waiting for that first phase's task only."""
    lines = []
    for task, first, last in branch_groups(arrays):
        if task is None:
            wait, what = "", "branches of first phases already there"
        else:
            wait = f' --dependency=afterok:"${{first_phases%%;*}}_{task}" --kill-on-invalid-dep=yes'
            what = (f"branches of {arrays['first_phases'][task].name} (first phases task {task}; cancelled with "
                    f"Reason=DependencyNeverSatisfied if it fails)")
        lines.append(f"branches=$(sbatch --parsable --array={first}-{last}{wait} {script})")
        lines.append(f'echo "{what}: job ${{branches%%;*}}, tasks {first}-{last}" | tee -a "$log"')
    return lines


def _sbatch(name, count, folder, resources):
    workdir = resources["workdir"]
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name=metasaug-{name}", f"#SBATCH --array=0-{count - 1}",
             f"#SBATCH --output={folder / 'logs'}/{name}_%A_%a.out",
             f"#SBATCH --cpus-per-task={resources['cpus_per_task']}", f"#SBATCH --time={resources['time']}",
             "#SBATCH --requeue", "#SBATCH --open-mode=append",  # a requeued task's log goes on
             f"#SBATCH --signal=B:TERM@{resources['signal_seconds']}"]
    if workdir:
        lines.append(f"#SBATCH --chdir={workdir}")
    if resources["gpus_per_task"]:
        lines.append(f"#SBATCH --gres=gpu:{resources['gpus_per_task']}")
    if resources["mem"]:
        lines.append(f"#SBATCH --mem={resources['mem']}")
    if resources["partition"]:
        lines.append(f"#SBATCH --partition={resources['partition']}")
    lines += [
        "# Each task runs one line of the list: a finished run is skipped, an interrupted one resumes. Before the",
        "# time limit SLURM sends SIGTERM: the training writes its checkpoint and the task requeues itself.",
        f"cd {shlex.quote(workdir)}" if workdir else 'cd "${SLURM_SUBMIT_DIR:-.}"  # submit.sh runs sbatch there',
        *([resources["setup"]] if resources["setup"] else []),
        'export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}',
        f"mapfile -t commands < {shlex.quote(str(folder / (name + '.txt')))}",
        'eval "exec ${commands[$SLURM_ARRAY_TASK_ID]}" &',
        "child=$!",
        "trap 'stopping=1; kill -TERM $child 2>/dev/null' TERM",
        'wait "$child"; code=$?',
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done',
        'if [ -n "${stopping:-}" ] && [ "$code" -ne 0 ]; then',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "fi",
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"
