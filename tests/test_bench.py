"""The benchmark script end to end, on a little synthetic data: it runs and reports every figure."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

FIGURES = ("plain_step", "metasaug_jvp", "metasaug_double_backward", "data_pipeline", "epoch_plain",
           "epoch_metasaug")


@pytest.mark.parametrize("amp", [False, True])
def test_bench_reports_every_figure_for_both_designs(tmp_path, amp):
    out = tmp_path / "bench.json"
    # One torch thread: on a busy machine OpenMP threads waiting for each other can take minutes.
    command = [sys.executable, "bench/bench_train.py", "--device", "cpu", "--repeats", "1", "--batch-size", "8",
               "--epoch-batches", "2", "--steps", "2", "--synthetic-train-size", "64", "--threads", "1", "--released-design",
               "--json", str(out)] + ["--amp"] * amp
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["settings"]["amp"] is amp
    figures = report["figures"]
    assert set(figures) == set(FIGURES)
    for name, figure in figures.items():
        assert name in result.stdout
        assert figure["ratio"] > 0
        for side in ("ours", "released"):
            for key in ("images_per_s", "ms_per_step", "peak_memory_mib"):
                assert figure[side][key] > 0, (name, side, key)
    for name in ("epoch_plain", "epoch_metasaug"):
        assert all(seconds > 0 for seconds in figures[name]["epoch_s"].values())
