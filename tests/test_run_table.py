"""tools/run_table.py: the plan (shared first phases, estimates), a real tiny sweep that skips finished
runs and resumes interrupted ones, Ctrl-C, and refusals; building on committed results (--reuse, --export) and
the report that pools them; the SLURM path; provenance (the commit's +dirty) and the --eval_every protocol."""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (CE, REPO_ROOT, assert_ok, assert_tensors_equal, call_main, load, make_tree, run_together,
                      train_flags, untimed)
import cifar_flags
import timing
from cli import git_commit
from tools import report, run_table
from tools import sweep as sweep_module

REDUCED = ["--epochs", "20", "--meta_start", "16", "--lr_milestones", "16", "18"]


def dry_run(argv, capsys):
    assert run_table.main(argv + ["--dry-run"]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_plan_prints_its_summary_first_and_shares_first_phases(capsys):
    lines = dry_run(["table1", "--seeds", "1", "2", "--device", "cpu", *REDUCED], capsys)
    assert lines[0].startswith("table1 (cifar10): 90 runs from 110 trainings (20 shared first phases), imbalance "
                               "0.005 0.01 0.02 0.05 0.1, seeds 1 2")
    assert len(lines) < 10 and not any("MetaSAug_CE_train.py" in line for line in lines)  # commands: --verbose
    text = "\n".join(lines)
    assert "shared first phases: 20 (" in text
    assert "ce+metasaug_ce+metasaug_focal+metasaug_ldam; ldam+ldam_drw" in text
    assert "second phases branched from them: 60 (" in text and "runs from scratch: 30 (" in text
    saved = re.search(r"without shared first phases ([\d.]+) h in all \(sharing saves ([\d.]+) h\)", text)
    assert saved and 0 < float(saved.group(2)) < float(saved.group(1))
    assert ("of the 110 trainings 0 finished (skipped), 0 interrupted (resumed from their checkpoints), 110 to "
            "start") in text


def test_plan_verbose_lists_each_branch_after_its_first_phase(capsys):
    lines = dry_run(["table1", "--seeds", "1", "--imb", "0.01", "--device", "cpu", "--verbose", *REDUCED], capsys)
    commands = [line for line in lines if line.startswith("[")]
    assert len(commands) == 9 + 2
    first_phases = {}
    for line in commands:
        assert "--epochs 20 --meta_start 16 --lr_milestones 16 18" in line
        name = re.search(r"--save_name (\S+)", line).group(1)
        if line.startswith("[first phase"):
            assert line.endswith("--first_phase_only") and "_first_phase_" in name
            first_phases[name] = re.search(r"--checkpoint_dir (\S+)", line).group(1)
        elif line.startswith("[branch"):
            source = re.search(r"--init_from (\S+)_phase1\.pth\.tar", line).group(1)
            assert any(source == f"{folder}/{phase}" for phase, folder in first_phases.items()), line
        else:
            assert "--init_from" not in line and re.search(r"--method cb|--loss focal", line), line
    assert len(first_phases) == 2


def test_no_share_trains_every_run_from_scratch(capsys):
    lines = dry_run(["table5", "--seeds", "1", "--device", "cpu", "--no-share", *REDUCED], capsys)
    assert "shared first phases: 0 (0.0 min)" in "\n".join(lines)
    assert "runs from scratch: 9 (" in "\n".join(lines)


def test_time_estimates_follow_the_thread_count_of_each_job(capsys, monkeypatch):
    one, two, four = (timing.measured_throughput("cpu", n) for n in (1, 2, 4))
    measured_one = json.loads(timing.THROUGHPUT.read_text())["cpu"]["threads"]["1"]
    assert one["plain"] == measured_one["plain"] and one["machine"].endswith("1 thread")  # measured, not scaled
    assert four["metasaug"] == 2 * two["metasaug"] and four["machine"].endswith("scaled to 4")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    plans = {jobs: dry_run(["table5", "--seeds", "1", "--imb", "0.01", "--device", "cpu", "--jobs", jobs], capsys)
             for jobs in ("1", "2")}
    threads = torch.get_num_threads()  # one job runs with this process's threads
    assert f"dev machine), {min(threads, 2)} thread" in "\n".join(plans["1"])
    assert "dev machine), 1 thread" in "\n".join(plans["2"])  # two jobs on two cores: one thread each


def test_a_training_flag_the_scripts_refuse_is_one_line(capsys):
    assert run_table.main(["table5", "--dry-run", "--method", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refuses the training flags" in err and "nope" in err


# ---------------------------------------------------------------------------------------------
# A real sweep: 2 rows sharing one first phase, on a tiny 10-class image tree
# ---------------------------------------------------------------------------------------------

TINY = ["--num_meta", "2", "--batch-size", "8", "--test-batch-size", "16", "--epochs", "3", "--meta_start", "2",
        "--lr_milestones", "2", "--workers", "1", "--print-freq", "1"]


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = make_tree(tmp_path / "data", 10, train=12, test=4)
    return ["table5", "--rows", "isda", "metasaug_ce", "--imb", "0.5", "--seeds", "1", "--device", "cpu",
            "--data_root", str(data), "--out_root", str(tmp_path / "runs"), *TINY]


def results(tmp_path):
    return {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs" / "table5").glob("*/result.json")}


def test_sweep_trains_once_then_skips_then_resumes_what_lost_its_result(sweep, tmp_path, capfd):
    assert run_table.main(sweep) == 0
    out = capfd.readouterr().out
    assert ("progress: of the 3 trainings 0 finished (skipped), 0 interrupted (resumed from their checkpoints), 3 "
            "to start") in out
    first = results(tmp_path)
    assert sorted(first) == ["table5_cifar10_isda_imb0.5_seed1", "table5_cifar10_metasaug_ce_imb0.5_seed1"]
    phase1 = tmp_path / "runs" / "table5" / "checkpoints" / "table5_cifar10_isda_first_phase_imb0.5_seed1_phase1.pth.tar"
    assert phase1.is_file()
    for result in first.values():
        assert result["config"]["init_from"] == str(phase1)

    assert run_table.main(sweep) == 0  # nothing left to do
    out = capfd.readouterr().out
    assert "3 finished (skipped), 0 interrupted (resumed from their checkpoints), 0 to start" in out
    assert "== " not in out

    lost = tmp_path / "runs" / "table5" / "table5_cifar10_isda_imb0.5_seed1" / "result.json"
    lost.unlink()
    assert run_table.main(sweep + ["--verbose"]) == 0
    out = capfd.readouterr().out
    assert "2 finished (skipped), 1 interrupted (resumed from their checkpoints), 0 to start" in out
    assert re.search(r"\[branch, interrupted\] .*--resume \S+table5_cifar10_isda_imb0\.5_seed1_ckpt\.pth\.tar", out)
    again = results(tmp_path)
    for key in ("final_top1_error", "evaluated_epochs"):
        assert again["table5_cifar10_isda_imb0.5_seed1"][key] == first["table5_cifar10_isda_imb0.5_seed1"][key]
    assert (untimed(again["table5_cifar10_isda_imb0.5_seed1"]["history"])
            == untimed(first["table5_cifar10_isda_imb0.5_seed1"]["history"]))


def test_a_run_of_another_recipe_resumes_with_its_recipes_flags(sweep, tmp_path, capfd):
    """The plan parses a row's flags as its script does, --recipe cao2019's defaults included (no Nesterov,
    weight decay 2e-4, Cao et al.'s subset), so an interrupted LDAM run resumes rather than clash with them."""
    ldam = ["table1", "--rows", "ldam", *sweep[sweep.index("--imb"):]]
    assert run_table.main(ldam) == 0
    result = tmp_path / "runs" / "table1" / "table1_cifar10_ldam_imb0.5_seed1" / "result.json"
    config = json.loads(result.read_text())["config"]
    assert (config["recipe"], config["nesterov"], config["weight_decay"]) == ("cao2019", False, 2e-4)
    result.unlink()
    capfd.readouterr()
    assert run_table.main(ldam) == 0
    out = capfd.readouterr().out
    assert "0 finished (skipped), 1 interrupted (resumed from their checkpoints), 0 to start" in out
    assert result.is_file()


def test_the_plan_parses_every_run_as_its_script_does():
    args = run_table.parse_args(["table1", "--seeds", "1", "--imb", "0.01", "--device", "cpu"])
    from tools import plan
    jobs = plan.plan(args, throughput=None)
    assert {job.args.recipe for job in jobs} == {"released", "cao2019"}
    for job in jobs:
        assert job.args == cifar_flags.parse_args(job.script, "", plan.LOSSES[job.script], job.flags), job.name


def test_sweep_refuses_results_of_other_flags(sweep, tmp_path, capfd):
    folder = tmp_path / "runs" / "table5" / "table5_cifar10_isda_imb0.5_seed1"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"config": {"lam": 0.75, "method": "isda"}}))
    assert run_table.main(sweep) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was written with other flags (--lam 0.25 vs 0.75)" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "table5").iterdir()) == [folder.name]


def test_a_run_is_looked_at_again_as_it_starts_not_only_when_the_sweep_was_planned(sweep, tmp_path, capsys):
    """What another process wrote after the plan (here: a result of other flags) is found before training."""
    from cli import duration
    args = run_table.parse_args(sweep + ["--rows", "isda", "--no-share"])  # one run from scratch
    jobs = run_table.sweep_jobs(args, None, None)
    assert [job.state for job in jobs] == ["new"]
    jobs[0].result.parent.mkdir(parents=True)
    jobs[0].result.write_text(json.dumps({"config": {"lam": 0.75, "method": "isda"}}))
    assert sweep_module.run_local(jobs, 1, "cpu", duration) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was written with other flags (--lam 0.25 vs 0.75)" in err
    assert sorted(p.name for p in jobs[0].result.parent.iterdir()) == ["result.json"]  # nothing launched
    assert not (tmp_path / "runs" / "table5" / "checkpoints").exists()


def test_ctrl_c_stops_after_the_running_training_wrote_its_checkpoint(sweep, tmp_path):
    command = [sys.executable, str(REPO_ROOT / "tools" / "run_table.py"), *sweep]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    try:
        for line in proc.stdout:  # wait until the first-phase training is inside its epochs
            seen.append(line)
            if line.startswith("  epoch 1 iter 2/"):
                break
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, "".join(seen) + err
    assert "Traceback" not in err
    assert "stopped by signal 2; the running trainings wrote their checkpoints" in err
    checkpoints = tmp_path / "runs" / "table5" / "checkpoints"
    assert (checkpoints / "table5_cifar10_isda_first_phase_imb0.5_seed1_ckpt.pth.tar").is_file()
    assert not results(tmp_path)


# ---------------------------------------------------------------------------------------------
# Several trainings at once, and SLURM
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, pattern", [
    (["--jobs", "0"], r"--jobs must be at least 1, got 0"),
    (["--jobs", str((os.cpu_count() or 1) + 1), "--device", "cpu"], r"would run more threads than the \d+ cores"),
    (["--jobs", "64", "--device", "cuda"],
     r"--jobs 64 needs 64 GPUs at --runs_per_gpu 1, but \d+ are visible|--device cuda, but no GPU is visible here"),
    (["--runs_per_gpu", "0", "--device", "cuda"], r"--runs_per_gpu must be at least 1, got 0"),
    (["--emit", "cluster"], r"--emit takes 'slurm DIR' or 'commands'"),
])
def test_sweep_refuses_what_cannot_run(flags, pattern, tmp_path, capsys):
    assert run_table.main(["table5", "--out_root", str(tmp_path / "runs"), "--data_root", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert list(tmp_path.iterdir()) == []


def test_emitted_commands_run_one_job_each(sweep, tmp_path, capsys):
    assert run_table.main(sweep + ["--emit", "commands"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 3 and "--run table5_cifar10_isda_first_phase_imb0.5_seed1 --" in commands[0]
    assert all(c.split("--run ")[1].split()[1] == "--" for c in commands)  # training flags after a bare --
    branch = commands[1].split("--run ")[1].split()[0]
    assert run_table.main(sweep + ["--run", branch]) == 2  # its first phase has not run yet
    assert "whose first phase has not finished" in capsys.readouterr().err
    assert run_table.main(sweep + ["--run", "nope"]) == 2


def test_an_emit_folder_with_another_sweep_is_refused(sweep, tmp_path, capsys):
    folder = tmp_path / "slurm"
    assert run_table.main(sweep + ["--emit", "slurm", str(folder)]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert run_table.main(sweep + ["--lam", "0.5", "--emit", "slurm", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds another sweep" in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    script = (folder / "branches.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --requeue" in script and "--signal=B:TERM@300" in script
    assert "--dependency=afterok" in (folder / "submit.sh").read_text()


def test_help_lists_the_rows_and_defaults_without_importing_torch():
    probe = ("import sys; sys.argv = ['run_table.py', '--help']\nfrom tools import run_table\ntry:\n"
             "    run_table.main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60).stdout
    assert out.strip().endswith("False"), out
    text = " ".join(out.split())
    assert "table5 (cifar10, imbalance 0.01 0.02 0.05): metasaug_no_reweight isda metasaug_ce." in text
    assert "(default: [1, 2, 3])" in text and "(default: runs)" in text


def test_an_emitted_slurm_sweep_asks_for_gpus_and_names_nothing_of_this_machine(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as if this were the repository: the sweep's folder is inside it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU here: the sweep is for the cluster's
    folder = tmp_path / "sweeps" / "table1"
    argv = ["table1", "--rows", "ce", "cb_ce", "metasaug_ce", "--imb", "0.01", "--seeds", "1", "--emit", "slurm",
            "sweeps/table1", "--setup", "source ~/venv/bin/activate", *REDUCED]
    assert run_table.main(argv) == 0
    out = capsys.readouterr().out
    assert "of GPU time" in out and "one NVIDIA H200" in out
    files = {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}
    for name, text in files.items():
        assert str(REPO_ROOT) not in text and sys.executable not in text and str(tmp_path) not in text, name
    assert 'cd "$(dirname "$0")"/../..' in files["submit.sh"]
    assert all("#SBATCH --gres=gpu:1" in files[f"{n}.sbatch"] for n in ("first_phases", "branches", "scratch"))
    assert "source ~/venv/bin/activate" in files["branches.sbatch"]
    assert files["branches.txt"].startswith("python tools/run_table.py table1 ")
    submit = files["submit.sh"]
    assert re.search(r'branches=\$\(sbatch --parsable --array=0-1 '
                     r'--dependency=afterok:\S+_0" --kill-on-invalid-dep=yes', submit)  # its own first phase's task
    assert re.search(r"scratch=\$\(sbatch --parsable \S*scratch.sbatch", submit)  # CB-CE needs no first phase
    assert run_table.main(argv[:-len(REDUCED) - 2] + ["--device", "cpu", "--emit", "slurm", "sweeps/cpu",
                                                     *REDUCED]) == 0
    assert "--gres" not in (tmp_path / "sweeps" / "cpu" / "branches.sbatch").read_text()
    assert "of CPU time" in capsys.readouterr().out


def test_several_trainings_share_a_gpu_with_the_cpu_threads_split(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    environments = sweep_module.slot_environments("cuda", 4, per_gpu=2)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in environments] == ["3", "3", "5", "5"]
    assert {env["OMP_NUM_THREADS"] for env in environments} == {"4"}
    assert sweep_module.check_slots("cuda", 4, per_gpu=2) is None
    assert "needs 3 GPUs at --runs_per_gpu 2" in sweep_module.check_slots("cuda", 5, per_gpu=2)


def test_two_jobs_at_once_on_the_cpu(sweep, tmp_path, capfd):
    assert run_table.main(sweep + ["--jobs", "2"]) == 0
    out = capfd.readouterr().out
    assert "up to 2 at once" in out
    starts = re.findall(r"== start (\S+) \((first phase|branch)\) on (\d+) CPU threads", out)
    assert [kind for _, kind, _ in starts] == ["first phase", "branch", "branch"]
    assert {threads for _, _, threads in starts} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert sorted(results(tmp_path)) == ["table5_cifar10_isda_imb0.5_seed1", "table5_cifar10_metasaug_ce_imb0.5_seed1"]
    for name in results(tmp_path):
        console = (tmp_path / "runs" / "table5" / name / "console.log").read_text()
        assert "final top-1 error" in console


def test_a_second_sweep_on_the_same_runs_waits_for_the_first_and_nothing_trains_twice(sweep, tmp_path, capfd):
    """Two lanes (or a sweep and a resume by hand) that meet on a run: the later one waits, then counts it done."""
    command = [sys.executable, str(REPO_ROOT / "tools" / "run_table.py"), *sweep]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        phase = "table5_cifar10_isda_first_phase_imb0.5_seed1"
        lock = tmp_path / "runs" / "table5" / "checkpoints" / f"{phase}.lock"
        deadline = time.time() + 120
        while not lock.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # the first sweep holds the first phase: its training is starting
        assert run_table.main(sweep) == 0
        second = capfd.readouterr()
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, out + err
    assert f"== waiting for {phase}: another process is training it (pid " in second.out
    assert f"== done {phase}: another process finished it" in second.out
    assert "failed" not in second.err + err
    assert sorted(results(tmp_path)) == ["table5_cifar10_isda_imb0.5_seed1", "table5_cifar10_metasaug_ce_imb0.5_seed1"]
    starts = re.findall(r"== start (\S+)", out + second.out)
    assert sorted(starts) == sorted([phase, *results(tmp_path)])  # each training once, by one sweep or the other
    for name in starts:
        notes = (tmp_path / "runs" / "table5" / name / "NOTES.txt").read_text()
        assert notes.count(" launched ") == 1 and notes.count("exited with code 0") == 1, notes


SLURM_TOOLS = ("sbatch", "squeue", "scontrol", "slurmctld", "slurmd", "munged")


@pytest.fixture
def local_slurm(tmp_path):
    """A one-node SLURM cluster on this machine (tools/local_slurm.sh) for the test: the environment that reaches
    it."""
    if any(shutil.which(t) is None for t in SLURM_TOOLS):
        pytest.skip("SLURM is not installed (Debian: apt-get install slurm-wlm munge)")
    cluster = tmp_path / "cluster"
    started = subprocess.run(["bash", str(REPO_ROOT / "tools" / "local_slurm.sh"), "start", str(cluster)],
                             capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"could not start a local SLURM cluster: {started.stderr.strip()[-300:]}")
    try:
        yield {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(REPO_ROOT / "tools" / "local_slurm.sh"), "stop", str(cluster)], timeout=60)


def wait_for_empty_queue(env, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        shown = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
        queue = shown.stdout.strip()
        if shown.returncode == 0 and not queue:  # a busy controller may not answer: ask again
            return
        time.sleep(3)
    pytest.fail(f"still queued after {seconds} s (a task pending forever?):\n{queue}")


def emit_and_submit(argv, folder, env):
    """Emit the sweep ``argv`` for SLURM into ``folder`` and submit it; submit.sh's output."""
    emit = argv + ["--emit", "slurm", str(folder), "--cpus_per_task", "1", "--time", "00:20:00",
                   "--python", sys.executable]  # this test's interpreter, not the nodes' "python"
    assert subprocess.run([sys.executable, "tools/run_table.py", *emit], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120).returncode == 0
    submitted = subprocess.run(["bash", str(folder / "submit.sh")], env=env, capture_output=True, text=True,
                               timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout


def test_emitted_slurm_arrays_run_on_a_local_cluster_and_a_failed_first_phase_stops_only_its_branches(
        sweep, tmp_path, local_slurm):
    env = local_slurm
    two_seeds = sweep[:sweep.index("--seeds") + 1] + ["1", "2"] + sweep[sweep.index("--seeds") + 2:]
    # Seed 2's first phase fails when it writes its first checkpoint: a folder stands where the file goes.
    checkpoints = tmp_path / "runs" / "table5" / "checkpoints"
    (checkpoints / "table5_cifar10_isda_first_phase_imb0.5_seed2_ckpt.pth.tar").mkdir(parents=True)
    folder = tmp_path / "slurm"
    submitted = emit_and_submit(two_seeds, folder, env)
    wait_for_empty_queue(env, 900)
    groups = dict(re.findall(r"branches of \S+seed(\d) .*: job (\d+)", submitted))
    cancelled = subprocess.run(["scontrol", "show", "job", groups["2"]], env=env, capture_output=True,
                               text=True).stdout
    logs = {p.name: p.read_text() for p in (folder / "logs").iterdir()}
    assert sorted(results(tmp_path)) == ["table5_cifar10_isda_imb0.5_seed1",
                                         "table5_cifar10_metasaug_ce_imb0.5_seed1"], logs
    assert sum(name.startswith("first_phases_") for name in logs) == 2
    branches = [text for name, text in logs.items() if name.startswith("branches_")]
    assert len(branches) == 2  # seed 1's; seed 2's never started
    for text in branches:  # each branch started after its own first phase had finished
        assert "branching at epoch 3 from the first phase" in text and "seed1" in text
    assert "JobState=CANCELLED" in cancelled and "Reason=DependencyNeverSatisfied" in cancelled, cancelled
    assert f"job {groups['2']}" in logs["submitted.txt"]  # which job is which, for the user reading squeue


def test_a_slurm_task_signalled_before_its_time_limit_checkpoints_requeues_itself_and_resumes(
        sweep, tmp_path, local_slurm):
    """What SLURM does --signal_seconds before the time limit (SIGTERM to the batch script), sent by hand: the
    training checkpoints, the task requeues itself, and its second start resumes; one log holds both."""
    env = local_slurm
    longer = ["table1", "--rows", "cb_ce", *sweep[sweep.index("--imb"):sweep.index("--num_meta")], "--num_meta", "2",
              "--batch-size", "8", "--test-batch-size", "16", "--epochs", "40", "--meta_start", "30",
              "--lr_milestones", "30", "--workers", "1", "--print-freq", "1"]
    folder = tmp_path / "slurm"
    job = re.search(r"scratch: job (\d+)", emit_and_submit(longer, folder, env)).group(1)
    log = folder / "logs" / f"scratch_{job}_0.out"
    deadline = time.time() + 300
    while not (log.is_file() and "Epoch 2/40" in log.read_text()):
        assert time.time() < deadline, "the task did not reach epoch 2 within 5 min"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=TERM", "--batch", f"{job}_0"], env=env, check=True, timeout=30)
    while "Restarts=1" not in (shown := subprocess.run(["scontrol", "show", "job", f"{job}_0"], env=env,
                                                       capture_output=True, text=True).stdout):
        assert time.time() < deadline, f"the task did not requeue itself:\n{shown}"
        time.sleep(1)
    # SLURM holds a requeued job back for about two minutes; the test waits ten seconds only (a start within a
    # second or so of the requeue fails: the node still holds the first start's credential as revoked).
    subprocess.run(["scontrol", "update", f"JobId={job}_0", "StartTime=now+10"], env=env, check=True, timeout=30)
    wait_for_empty_queue(env, 300)
    text = log.read_text()
    assert "interrupted by signal 15 in epoch" in text and "(scratch, resumed)" in text, text[-2000:]
    assert text.index("interrupted by signal 15") < text.index("resumed at epoch")
    result = json.loads((tmp_path / "runs" / "table1" / "table1_cifar10_cb_ce_imb0.5_seed1" / "result.json")
                        .read_text())
    assert result["final_epoch"] == 40


# ---------------------------------------------------------------------------------------------
# Building on committed results: --export writes them, --reuse builds on them, the report pools them
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny sweep (one first phase, two branches, --eval_every 2) exported into a committed-style tree: the
    sweep's arguments, its out_root and the tree (read only)."""
    base = tmp_path_factory.mktemp("exported")
    data = make_tree(base / "data", 10, train=12, test=4)
    argv = ["table5", "--rows", "isda", "metasaug_ce", "--imb", "2", "--seeds", "1", "--device", "cpu",
            "--data_root", str(data), "--out_root", str(base / "runs"), "--export", str(base / "results"), *TINY,
            "--eval_every", "2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        assert run_table.main(argv) == 0
    return argv, base / "runs" / "table5", base / "results"


def test_export_writes_each_finished_training_in_the_committed_layout_once(exported, capfd):
    argv, runs, tree = exported
    assert sorted(p.relative_to(tree).as_posix() for p in tree.glob("*/*")) == [
        "imb2/first_phase_seed1", "imb2/isda_seed1", "imb2/metasaug_ce_seed1"]
    first_phase = tree / "imb2" / "first_phase_seed1"
    assert {"phase1.pth", "README.md", "NOTES.txt", "train.log"} <= {p.name for p in first_phase.iterdir()}
    for stem in ("isda", "metasaug_ce"):
        run = tree / "imb2" / f"{stem}_seed1"
        assert {"result.json", "model.pth", "criterion.pth", "README.md", "NOTES.txt", "train.log"} <= {
            p.name for p in run.iterdir()}
        assert (run / "result.json").read_bytes() == (runs / f"table5_cifar10_{stem}_imb0.5_seed1" /
                                                      "result.json").read_bytes()
        readme = (run / "README.md").read_text()
        assert "from the committed first phase [first_phase_seed1](../first_phase_seed1)" in readme
        assert f"--init_from {first_phase / 'phase1.pth'}" in readme
        notes = (run / "NOTES.txt").read_text().splitlines()
        assert re.match(r"\S+ launched table5_cifar10_\S+ \(branch\) on .+: the CPU, 1 CPU thread of \d+ cores "
                        r".*torch .*: MetaSAug_CE_train.py .*--init_from \S+ \(commit [0-9a-f]{40}", notes[0]), notes
        assert notes[1].endswith("exited with code 0")
        assert re.fullmatch(r"time: epoch 3 on the CPU, [\d.]+ CPU-hours \(wall time of training and evaluation\); "
                            rf"epochs 1-2 are the committed first phase's \({re.escape(str(first_phase))}\)", notes[2])
    assert (first_phase / "NOTES.txt").read_text().splitlines()[-1].startswith("time: epochs 1-2 on the CPU, ")
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*")}
    assert run_table.main(argv) == 0  # all done and exported: nothing is trained or written again
    assert "== " not in capfd.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tree.rglob("*")} == before


def test_reuse_branches_from_a_committed_first_phase_and_counts_committed_runs_done(exported, tmp_path, capfd):
    argv, _, committed_tree = exported
    tree = tmp_path / "results"
    shutil.copytree(committed_tree, tree)
    data = argv[argv.index("--data_root") + 1]
    sweep = ["table5", "--imb", "2", "--seeds", "1", "--device", "cpu", "--data_root", data, "--out_root",
             str(tmp_path / "runs"), "--reuse", str(tree), "--export", str(tree), *TINY]  # --eval_every: theirs
    assert run_table.main(sweep + ["--emit", "slurm", str(tmp_path / "slurm")]) == 0
    out = capfd.readouterr().out
    assert ("reused from {}: 1 first phase (their branches start from the committed phase1.pth), 2 runs (done); "
            "the committed runs were evaluated with --eval_every 2, this sweep's with --eval_every 2").format(
        tree) in out
    assert not (tmp_path / "slurm" / "first_phases.txt").exists()
    assert "branches of first phases already there: job ${branches%%;*}, tasks 0-0" in (
        tmp_path / "slurm" / "submit.sh").read_text()  # the one branch left waits for nothing
    assert run_table.main(sweep + ["--emit", "commands"]) == 0
    commands = capfd.readouterr().out.strip().splitlines()
    assert len(commands) == 1 and "--run table5_cifar10_metasaug_no_reweight_imb0.5_seed1" in commands[0]
    assert f"--reuse {tree} --export {tree}" in commands[0] and commands[0].endswith("--eval_every 2")
    with pytest.MonkeyPatch.context() as patch:  # what the scheduler's task runs
        patch.setenv("OMP_NUM_THREADS", "1")
        assert run_table.main(shlex.split(commands[0])[2:]) == 0
    assert "== exported table5_cifar10_metasaug_no_reweight_imb0.5_seed1" in capfd.readouterr().out
    result = json.loads((tmp_path / "runs" / "table5" / "table5_cifar10_metasaug_no_reweight_imb0.5_seed1" /
                         "result.json").read_text())
    assert result["config"]["init_from"] == str(tree / "imb2" / "first_phase_seed1" / "phase1.pth")
    assert result["config"]["eval_every"] == 2
    readme = (tree / "imb2" / "metasaug_no_reweight_seed1" / "README.md").read_text()
    assert "from the committed first phase [first_phase_seed1](../first_phase_seed1)" in readme
    assert run_table.main(sweep) == 0  # every cell committed now: nothing to train or export
    out = capfd.readouterr().out
    assert "0 to start; 4 committed under --reuse (not trained)" in out and "== " not in out
    # Another evaluation protocol reuses the first phase (evaluating trains nothing) but none of the runs, and
    # says so.
    assert run_table.main(sweep[:sweep.index("--export")] + ["--out_root", str(tmp_path / "other"), *TINY,
                                                            "--eval_every", "1", "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "1 first phase (" in out and "0 runs (done)" in out and "this sweep's with --eval_every 1" in out


def test_reuse_branches_a_row_planned_alone_from_the_committed_first_phase(exported, tmp_path, capsys):
    argv, _, tree = exported
    data = argv[argv.index("--data_root") + 1]
    sweep = ["table5", "--rows", "metasaug_no_reweight", "--imb", "2", "--seeds", "1", "--device", "cpu",
             "--data_root", data, "--out_root", str(tmp_path / "runs"), "--reuse", str(tree), "--dry-run",
             "--verbose", *TINY]
    assert run_table.main(sweep) == 0
    out = capsys.readouterr().out
    assert "reused from {}: 1 first phase".format(tree) in out
    (command,) = [line for line in out.splitlines() if line.startswith("[branch, new]")]
    assert f"--init_from {tree / 'imb2' / 'first_phase_seed1' / 'phase1.pth'}" in command
    assert run_table.main(sweep[:sweep.index("--reuse")] + sweep[sweep.index("--dry-run"):]) == 0
    assert "[scratch, new]" in capsys.readouterr().out  # without --reuse a row alone trains from scratch


def test_export_refuses_a_folder_that_holds_another_run(exported, tmp_path, capsys):
    argv, _, tree = exported
    other = argv[:argv.index("--out_root")] + ["--out_root", str(tmp_path / "runs"), "--export", str(tree), *TINY,
                                                "--eval_every", "1"]
    assert run_table.main(other) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "first_phase_seed1 exists and holds another first phase" in err
    assert not (tmp_path / "runs").exists()


def test_report_pools_a_cell_across_roots_and_over_eval_every(exported, tmp_path, capsys):
    _, runs, tree = exported
    assert report.main([str(tree), str(runs)]) == 0
    assert "2 runs under" in capsys.readouterr().out  # an exported copy is the same run: counted once
    committed = json.loads((tree / "imb2" / "isda_seed1" / "result.json").read_text())
    assert committed["evaluated_epochs"] == [2, 3]
    history = [dict(h, test_top1=99.0) if h["epoch"] == 1 else h for h in committed["history"]]  # evaluated, best
    every_epoch = dict(committed, seed=2, final_top1_error=committed["final_top1_error"] + 2, history=history,
                       config=dict(committed["config"], eval_every=1), evaluated_epochs=[1, 2, 3])
    (tmp_path / "sweep" / "isda").mkdir(parents=True)
    (tmp_path / "sweep" / "isda" / "result.json").write_text(json.dumps(every_epoch))
    assert report.main([str(tree), str(tmp_path / "sweep"), "--table", "table5"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| MetaSAug w/o meta-learning |"))
    best = min(100 - h["test_top1"] for h in committed["history"] if h["epoch"] in (2, 3))  # epoch 1: not by both
    assert f"**{committed['final_top1_error'] + 1:.2f} ± 1.41** (best {best:.2f} ± 0.00, n=2)" in row
    assert "Best epoch over every 2 epochs to epoch 2, then every epoch (--eval_every 2)." in text
    assert text.count("Protocol:") == 1  # one protocol: the cell pools both runs
    # A cell whose runs all evaluated every epoch: where cells differ, each says over which epochs its best is.
    (tmp_path / "sweep" / "no_reweight").mkdir()
    (tmp_path / "sweep" / "no_reweight" / "result.json").write_text(json.dumps(
        dict(every_epoch, config=dict(every_epoch["config"], method="metasaug_no_reweight"))))
    assert report.main([str(tree), str(tmp_path / "sweep"), "--table", "table5"]) == 0
    text = capsys.readouterr().out
    assert "Best epoch over" not in text
    rows = {}
    for line in text.splitlines():  # the error table's rows, the first of each name
        rows.setdefault(line.split(" | ")[0], line)
    assert "(best 1.00 over every epoch, n=1)" in rows["| MetaSAug w/o re-weighting"]
    assert f"(best {best:.2f} ± 0.00 over every 2 epochs to epoch 2" in rows["| MetaSAug w/o meta-learning"]


@pytest.mark.parametrize("main, argv, flag", [(run_table.main, ["table5", "--imb", "0", "--dry-run"], "--imb"),
                                              (run_table.main, ["table5", "--imb", "x", "--dry-run"], "--imb"),
                                              (report.main, [".", "--imbalance", "-1"], "--imbalance")])
def test_a_bad_imbalance_is_named_by_the_flag_typed(main, argv, flag, capsys):
    code, err, _ = call_main(main, argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"argument {flag}: expected an imbalance factor in (0, 1] such as 0.02 or a ratio above 1 such as 50" in err


def test_the_imbalance_is_a_factor_or_a_ratio_alike(exported, capsys):
    assert dry_run(["table5", "--imb", "50", "0.05", "--seeds", "1", "--device", "cpu"], capsys)[0].startswith(
        "table5 (cifar10): 6 runs from 8 trainings (2 shared first phases), imbalance 0.02 0.05, seeds 1")
    _, _, tree = exported
    for imbalance in ("2", "0.5"):
        assert report.main([str(tree), "--imbalance", imbalance]) == 0
        assert "| imbalance 2 |" in capsys.readouterr().out
    assert report.main([str(tree), "--imbalance", "0.1"]) == 0
    assert "imbalance 2" not in capsys.readouterr().out


def test_data_root_must_exist_here_for_a_local_sweep_and_where_the_jobs_run_for_an_emitted_one(tmp_path, capsys):
    missing = ["table5", "--seeds", "1", "--imb", "0.01", "--device", "cpu", "--data_root", str(tmp_path / "none"),
               "--out_root", str(tmp_path / "runs")]
    code, err, _ = call_main(run_table.main, missing, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--data_root {tmp_path / 'none'} does not exist; extract the dataset there" in err
    assert run_table.main(missing + ["--dry-run"]) == 0
    assert "does not exist here" in capsys.readouterr().out
    assert run_table.main(missing + ["--emit", "slurm", str(tmp_path / "slurm")]) == 0
    assert (f"--data_root {tmp_path / 'none'} must exist where the jobs run (relative paths: in the repository "
            f"there); it does not on this machine") in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slurm"]


def test_sweeps_folder_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "sweeps/table1/submit.sh"], cwd=REPO_ROOT)
    assert ignored.returncode == 0


# ---------------------------------------------------------------------------------------------
# What the committed runs' protocol and provenance rest on
# ---------------------------------------------------------------------------------------------

def test_evaluating_every_epoch_or_every_fifth_trains_bit_identically(tree4, tmp_path):
    """Evaluation draws no random number the training uses (its subset has its own seeded generator, the
    training's streams are keyed by seed, epoch and iteration) and changes no weight (eval mode), so the final
    weights do not depend on --eval_every: runs of either pool in one report cell."""
    def flags(every):
        return train_flags(tree4, tmp_path / f"every{every}", name="run") + [
            "--epochs", 7, "--meta_start", 6, "--lr_milestones", 6, "--eval_every", every, "--max_test_batches", 1]

    for proc in run_together([(CE, flags(1)), (CE, flags(5))], tmp_path):
        assert_ok(proc)
    every1, every5 = (load(tmp_path / f"every{n}" / "ckpt" / "run_ckpt.pth.tar") for n in (1, 5))
    for key in ("state_dict", "optimizer", "criterion", "epoch_sums"):
        assert_tensors_equal(every1[key], every5[key], key)
    results = [json.loads((tmp_path / f"every{n}" / "out" / "result.json").read_text()) for n in (1, 5)]
    assert [r["evaluated_epochs"] for r in results] == [[1, 2, 3, 4, 5, 6, 7], [5, 6, 7]]
    assert [h["train_loss"] for h in results[0]["history"]] == [h["train_loss"] for h in results[1]["history"]]
    assert results[0]["final_top1_error"] == results[1]["final_top1_error"]


def test_a_commit_is_dirty_only_when_tracked_code_differs_from_it(tmp_path):
    def git(*words):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *words], cwd=repo, check=True,
                       capture_output=True)

    repo = tmp_path / "repo"
    for name in ("code.py", "tools/tool.py", "README.md", "docs/page.md", "results/imb100/run/result.json",
                 "tools/NOTES.md"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("0\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    head = git_commit(repo)
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    shutil.rmtree(repo / "results")  # a copy of the repository without its results
    for name in ("README.md", "docs/page.md", "tools/NOTES.md"):
        (repo / name).write_text("changed prose\n")
    (repo / "untracked.py").write_text("new\n")
    git("add", "README.md")  # the index changed too
    assert git_commit(repo) == head
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy)  # every file's stat differs from what the index recorded
    assert git_commit(copy) == head
    (repo / "tools" / "tool.py").write_text("1\n")
    assert git_commit(repo) == head + "+dirty"
    git("add", "tools/tool.py")
    (repo / "tools" / "tool.py").write_text("0\n")  # staged, but the code in the tree is the commit's
    assert git_commit(repo) == head
    (repo / "code.py").unlink()
    assert git_commit(repo) == head + "+dirty"
    assert git_commit(tmp_path / "nowhere") is None
