"""tools/run_table.py: the plan (shared first phases, estimates), a real tiny sweep that skips finished
runs and resumes interrupted ones, Ctrl-C, and refusals."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, make_tree, untimed
from tools import run_table

REDUCED = ["--epochs", "20", "--meta_start", "16", "--lr_milestones", "16", "18"]


def dry_run(argv, capsys):
    assert run_table.main(argv + ["--dry-run"]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_plan_prints_its_summary_first_and_shares_first_phases(capsys):
    lines = dry_run(["table1", "--seeds", "1", "2", "--device", "cpu", *REDUCED], capsys)
    assert lines[0].startswith("table1 (cifar10): 90 runs, imbalance 0.005 0.01 0.02 0.05 0.1, seeds 1 2")
    assert len(lines) < 10 and not any("MetaSAug_CE_train.py" in line for line in lines)  # commands: --verbose
    text = "\n".join(lines)
    assert "shared first phases: 20 (" in text
    assert "ce+metasaug_ce+metasaug_focal+metasaug_ldam; ldam+ldam_drw" in text
    assert "second phases branched from them: 60 (" in text and "runs from scratch: 30 (" in text
    saved = re.search(r"without shared first phases ([\d.]+) h in all \(sharing saves ([\d.]+) h\)", text)
    assert saved and 0 < float(saved.group(2)) < float(saved.group(1))
    assert "0 finished (skipped), 0 interrupted (resumed from their checkpoints), 110 to start" in text


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
    assert "shared first phases: 0 (0 min)" in "\n".join(lines)
    assert "runs from scratch: 9 (" in "\n".join(lines)


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
    assert "progress: 0 finished (skipped), 0 interrupted (resumed from their checkpoints), 3 to start" in out
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
    assert "stopped by signal 2; table5_cifar10_isda_first_phase_imb0.5_seed1 wrote its checkpoint" in err
    checkpoints = tmp_path / "runs" / "table5" / "checkpoints"
    assert (checkpoints / "table5_cifar10_isda_first_phase_imb0.5_seed1_ckpt.pth.tar").is_file()
    assert not results(tmp_path)
