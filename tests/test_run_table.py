"""tools/run_table.py: the plan (shared first phases, estimates), a real tiny sweep that skips finished
runs and resumes interrupted ones, Ctrl-C, and refusals."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, make_tree, untimed
import timing
from tools import run_table
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
    assert one["plain"] < two["plain"] / 2 and one["machine"].endswith("1 thread")  # measured, not scaled
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


def test_sweep_refuses_results_of_other_flags(sweep, tmp_path, capfd):
    folder = tmp_path / "runs" / "table5" / "table5_cifar10_isda_imb0.5_seed1"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"config": {"lam": 0.75, "method": "isda"}}))
    assert run_table.main(sweep) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was written with other flags (--lam 0.25 vs 0.75)" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "table5").iterdir()) == [folder.name]


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
    assert run_table.main(["table5", "--out_root", str(tmp_path / "runs"), *flags]) == 2
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
    assert re.search(r"branches=\$\(sbatch --parsable --dependency=afterok", submit)
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


SLURM_TOOLS = ("sbatch", "squeue", "slurmctld", "slurmd", "munged")


@pytest.mark.skipif(any(shutil.which(t) is None for t in SLURM_TOOLS),
                    reason="SLURM is not installed (Debian: apt-get install slurm-wlm munge)")
def test_emitted_slurm_arrays_run_on_a_local_cluster(sweep, tmp_path):
    cluster = tmp_path / "cluster"
    started = subprocess.run(["bash", str(REPO_ROOT / "tools" / "local_slurm.sh"), "start", str(cluster)],
                             capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"could not start a local SLURM cluster: {started.stderr.strip()[-300:]}")
    env = {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf")}
    try:
        folder = tmp_path / "slurm"
        emit = sweep + ["--emit", "slurm", str(folder), "--cpus_per_task", "1", "--time", "00:20:00",
                        "--python", sys.executable]  # this test's interpreter, not the nodes' "python"
        assert subprocess.run([sys.executable, "tools/run_table.py", *emit], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120).returncode == 0
        submitted = subprocess.run(["bash", str(folder / "submit.sh")], env=env, capture_output=True, text=True,
                                   timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        deadline = time.time() + 900
        while time.time() < deadline:
            queue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip()
            if not queue:
                break
            time.sleep(3)
        assert not queue, f"still queued after 15 min:\n{queue}"
    finally:
        subprocess.run(["bash", str(REPO_ROOT / "tools" / "local_slurm.sh"), "stop", str(cluster)], timeout=60)
    logs = {p.name: p.read_text() for p in (folder / "logs").iterdir()}
    assert sorted(results(tmp_path)) == ["table5_cifar10_isda_imb0.5_seed1",
                                         "table5_cifar10_metasaug_ce_imb0.5_seed1"], logs
    assert sum(name.startswith("first_phases_") for name in logs) == 1
    branches = [text for name, text in logs.items() if name.startswith("branches_")]
    assert len(branches) == 2
    for text in branches:  # each branch started after its first phase had finished
        assert "branching at epoch 3 from the first phase" in text and "not finished" not in text
