"""How long a CIFAR run takes: the images/s measured on this project's machines (``throughput.json``) and
a run's own timing, turned into the expected total at its start and the ETA after each epoch; the planner
of tools/run_table.py uses the same figures."""
import json
from pathlib import Path

import torch

THROUGHPUT = Path(__file__).with_name("throughput.json")
# What a second-phase epoch costs in plain-phase epochs where no measurement says better (MetaSAug's
# forward-mode meta step: 4.3x on the CPU of throughput.json; a conservative figure elsewhere).
SECOND_PHASE_COST = 4.5


def measured_throughput(device_type, threads=None):
    """Images/s measured on this project's machines (throughput.json) for ``device_type``, or None:
    {"plain", "metasaug", "evaluation", "machine"}. A CPU's figures depend on its thread count, so they are
    taken at the count measured nearest to ``threads`` (default: torch's) and scaled linearly to it."""
    entry = json.loads(THROUGHPUT.read_text()).get(device_type) if THROUGHPUT.is_file() else None
    if entry is None or "threads" not in entry:
        return entry
    threads = threads or torch.get_num_threads()
    nearest = min(entry["threads"], key=lambda measured: (abs(int(measured) - threads), -int(measured)))
    scale = threads / int(nearest)
    figures = {key: entry["threads"][nearest][key] * scale for key in ("plain", "metasaug", "evaluation")}
    where = f"{entry['machine']}, {nearest} thread{'s' * (nearest != '1')}"
    return {**figures, "machine": where if scale == 1 else f"{where}, scaled to {threads}"}


def estimated_seconds(args, first_epoch, end_epoch, epoch_seconds, evaluation_seconds):
    """Seconds to train 0-based epochs [first_epoch, end_epoch) of ``args``' schedule, with ``epoch_seconds``
    = (a first-phase epoch, a second-phase epoch) and ``evaluation_seconds`` per evaluation."""
    total = 0.0
    for epoch in range(first_epoch, end_epoch):
        total += epoch_seconds[epoch >= args.meta_start]
        if evaluates(epoch, args.epochs, args.meta_start, args.eval_every):
            total += evaluation_seconds
    return total


def evaluates(epoch, epochs, meta_start, eval_every):
    """Whether 0-based ``epoch`` is evaluated: every ``eval_every``-th first-phase epoch, the first phase's
    last epoch (the branch point), every second-phase epoch and the last epoch."""
    return epoch >= meta_start - 1 or epoch == epochs - 1 or (epoch + 1) % eval_every == 0


def epoch_seconds(history, device, meta_step, meta_start, images, test_images):
    """(first-phase epoch, second-phase epoch, evaluation) seconds on ``device``: the averages of the epochs of
    ``history`` timed there (another device's timing says nothing of this one's), otherwise derived from what
    there is (a second-phase epoch costs SECOND_PHASE_COST plain ones for a ``meta_step`` method, one for the
    others) or from throughput.json; None where nothing says."""
    history = [h for h in history if "train_time_s" in h and h.get("device") == str(device)]

    def mean(values):
        return sum(values) / len(values) if values else None
    first = mean([h["train_time_s"] for h in history if h["epoch"] < meta_start])
    second = mean([h["train_time_s"] for h in history if h["epoch"] >= meta_start])
    evaluation = mean([h["eval_time_s"] for h in history if "eval_time_s" in h])
    cost = SECOND_PHASE_COST if meta_step else 1.0
    measured = measured_throughput(torch.device(device).type)
    if measured:
        cost = measured["plain"] / measured["metasaug"] if meta_step else 1.0
    if first is None and second is None and measured:
        first = images / measured["plain"]
    first = first if first is not None else (second / cost if second is not None else None)
    second = second if second is not None else (first * cost if first is not None else None)
    if evaluation is None and first is not None:
        rate = measured["evaluation"] / measured["plain"] if measured else 3.0  # a forward pass vs a step
        evaluation = first * test_images / images / rate
    return first, second, evaluation
