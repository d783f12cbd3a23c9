"""Running the jobs of a table sweep (tools/run_table.py): here, several at once, or on a SLURM cluster.

- ``run_local``: up to ``slots`` trainings at once on this machine, each first phase before the branches
  that start from it. On CUDA a job per visible GPU (``CUDA_VISIBLE_DEVICES``); on the CPU the cores are
  split between the jobs (``OMP_NUM_THREADS``). With several slots each job's console output goes to
  ``<out_dir>/console.log`` and the terminal gets one status line per job.
- ``emit_slurm``: job-array scripts (first phases, then the runs that depend on them with
  ``--dependency=afterok``), each array task a ``run_table.py ... --run NAME`` that skips a finished run
  and resumes an interrupted one, so requeued (preempted, or timed out after checkpointing on the
  pre-limit SIGTERM) tasks continue where they stopped.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def slot_environments(device, slots):
    """One environment per slot: a GPU each on CUDA, an equal share of the cores on the CPU."""
    if device == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(_cuda_count())]
        return [{**os.environ, "CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus[:slots]]
    if slots == 1:
        return [dict(os.environ)]
    threads = str(cpu_threads(slots))
    return [{**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(slots)]


def _cuda_count():
    import torch
    return torch.cuda.device_count()


def check_slots(device, slots):
    """A one-line reason why ``slots`` jobs cannot run at once here, or None."""
    if slots < 1:
        return f"--jobs must be at least 1, got {slots}"
    if device == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        count = len(visible.split(",")) if visible else _cuda_count()
        if slots > count:
            return f"--jobs {slots} needs {slots} GPUs, but {count} are visible; lower --jobs"
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


def run_local(jobs, slots, device, duration, status_every=60.0, done=()):
    """Run the unfinished jobs, up to ``slots`` at once; a branch starts once its first phase has finished
    (one of ``jobs``, or named in ``done``). Returns the exit code: 0, the first failure's, or 128 + signal
    after Ctrl-C / SIGTERM."""
    interrupt = Interrupt()
    environments = slot_environments(device, slots)
    quiet = slots > 1
    pending = [job for job in jobs if job.state != "finished"]
    finished = {job.name for job in jobs if job.state == "finished"} | set(done)
    failed, running = {}, {}  # slot -> (job, process, log handle)
    last_status = 0.0
    while pending or running:
        if interrupt.signal is None:
            for slot in [s for s in range(slots) if s not in running]:
                ready = next((j for j in pending if j.after is None or j.after in finished), None)
                if ready is None:
                    break
                pending.remove(ready)
                running[slot] = _start(ready, environments[slot], quiet)
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
            if code == 0:
                job.state = "finished"
                finished.add(job.name)
                print(f"== done {job.name}", flush=True)
            elif interrupt.signal is None:
                failed[job.name] = code
                print(f"{job.name} failed with exit code {code}" + (f"; see {job.console}" if quiet else "")
                      + f": {' '.join(job.command()[1:])}", file=sys.stderr, flush=True)
                blocked = [j for j in pending if j.after == job.name]
                for j in blocked:
                    pending.remove(j)
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
    return 0


def _start(job, environment, quiet):
    if not quiet:
        return job, subprocess.Popen(job.command(), env=environment), None
    Path(job.args.out_dir).mkdir(parents=True, exist_ok=True)
    log = open(job.console, "a")
    return job, subprocess.Popen(job.command(), env=environment, stdout=log, stderr=subprocess.STDOUT), log


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
    """Every unfinished job's command, first phases first."""
    ordered = [j for j in jobs if j.kind == "first phase"] + [j for j in jobs if j.kind != "first phase"]
    return [job_command(base_command, job) for job in ordered if job.state != "finished"]


def emit_slurm(folder, base_command, jobs, resources, workdir):
    """Write the sweep's SLURM files to ``folder``; a ValueError if it holds another sweep or other files.
    Returns the files written."""
    folder = Path(folder)
    first = [job_command(base_command, j) for j in jobs if j.kind == "first phase" and j.state != "finished"]
    rest = [job_command(base_command, j) for j in jobs if j.kind != "first phase" and j.state != "finished"]
    manifest = dict(command=shlex.join(base_command), first_phases=first, runs=rest, resources=resources)
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
    arrays = []
    for name, commands in (("first_phases", first), ("runs", rest)):
        if not commands:
            continue
        (folder / f"{name}.txt").write_text("\n".join(commands) + "\n")
        (folder / f"{name}.sbatch").write_text(_sbatch(name, len(commands), folder, resources, workdir))
        written += [folder / f"{name}.txt", folder / f"{name}.sbatch"]
        arrays.append(name)
    submit = ["#!/usr/bin/env bash", "# Submit the sweep: first phases, then the runs, which wait for them.",
              "set -euo pipefail", 'cd "$(dirname "$0")"']
    if "first_phases" in arrays:
        submit.append("first=$(sbatch --parsable first_phases.sbatch)")
        submit.append('echo "first phases: job $first"')
    if "runs" in arrays:
        dependency = ' --dependency=afterok:"${first%%;*}"' if "first_phases" in arrays else ""
        submit.append(f"runs=$(sbatch --parsable{dependency} runs.sbatch)")
        submit.append('echo "runs: job $runs"')
    (folder / "submit.sh").write_text("\n".join(submit) + "\n")
    return written + [folder / "submit.sh"]


def _sbatch(name, count, folder, resources, workdir):
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name=metasaug-{name}", f"#SBATCH --array=0-{count - 1}",
             f"#SBATCH --output={folder.resolve() / 'logs'}/{name}_%A_%a.out",
             f"#SBATCH --cpus-per-task={resources['cpus_per_task']}", f"#SBATCH --time={resources['time']}",
             "#SBATCH --requeue", f"#SBATCH --signal=B:TERM@{resources['signal_seconds']}"]
    if resources["gpus_per_task"]:
        lines.append(f"#SBATCH --gres=gpu:{resources['gpus_per_task']}")
    if resources["mem"]:
        lines.append(f"#SBATCH --mem={resources['mem']}")
    if resources["partition"]:
        lines.append(f"#SBATCH --partition={resources['partition']}")
    lines += [
        "# Each task runs one line of the list: a finished run is skipped, an interrupted one resumes. Before the",
        "# time limit SLURM sends SIGTERM: the training writes its checkpoint and the task requeues itself.",
        f"cd {shlex.quote(str(workdir))}",
        'export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}',
        f"mapfile -t commands < {shlex.quote(str(folder.resolve() / (name + '.txt')))}",
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
