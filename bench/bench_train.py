"""Training throughput of this repository against the released MetaSAug design, in one process.

"ours" is this repository as trainer.Run trains: ResNet-32, MetaSAug with the jvp (or the
double-backward reference) meta-gradient, uint8 images resident on the device and augmented per
batch. "released" rebuilds the authors' structure: a new network per MetaSAug iteration, a double
backward through it, a second forward, and per-image PIL transforms in a one-worker DataLoader
whose meta iterator is recreated at every step. All cases are timed round-robin over the repeats,
so load drifting on a shared machine hits them alike, and the ratios come from one run.

    python bench/bench_train.py --device cpu --repeats 5 --epoch-batches 20 --json bench.json
"""
import argparse
import ctypes
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_utils import CIFAR_MEAN, CIFAR_STD, LongTailData, build_dataset, long_tail_counts  # noqa: E402
from loss import MetaSAugLoss  # noqa: E402
from resnet import ResNet32  # noqa: E402
from cli import OneLineParser, git_commit  # noqa: E402
from meta_layers import augmentation_ratio  # noqa: E402
from cifar_flags import build_parser  # noqa: E402
from trainer import Run, learning_rate  # noqa: E402

RELEASED_LOADER = dict(num_workers=1, pin_memory=False)  # the released script's DataLoader kwargs
SEED = 0
PLAIN_EPOCH = 0  # the MetaSAug phase's epoch is trainer's --meta_start

FIGURES = {  # name: (what "ours" runs, what "released" runs, released case)
    "plain_step": ("plain CE step", "same step, default memory format", "plain_step"),
    "metasaug_jvp": ("MetaSAug iteration, jvp meta-gradient", "released MetaSAug iteration", "metasaug_step"),
    "metasaug_double_backward": ("MetaSAug iteration, double backward", "released MetaSAug iteration",
                                 "metasaug_step"),
    "data_pipeline": ("uint8 batch augment + meta batch", "PIL DataLoader + fresh meta iterator", "data_pipeline"),
    "epoch_plain": ("epoch, plain phase, data included", "released train()", "epoch_plain"),
    "epoch_metasaug": ("epoch, MetaSAug phase, data included", "released train_MetaSAug()", "epoch_metasaug"),
}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def synthetic_data(train_size=None, num_classes=10, num_meta=10):
    """Random uint8 images with CIFAR-10-LT's class counts (imbalance 100, 12,380 images), or
    those counts scaled to about `train_size` with every class kept, so the benchmark needs no files."""
    counts = long_tail_counts(4990, num_classes, 0.01)
    if train_size is not None:
        counts = [max(1, round(c * train_size / sum(counts))) for c in counts]
    generator = torch.Generator().manual_seed(SEED)

    def images(n):
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)

    train_labels = torch.arange(num_classes).repeat_interleave(torch.tensor(counts))
    meta_labels = torch.arange(num_classes).repeat_interleave(num_meta)
    return LongTailData(images(len(train_labels)), train_labels, images(len(meta_labels)), meta_labels,
                        images(0), torch.zeros(0, dtype=torch.int64), counts, [str(c) for c in range(num_classes)],
                        train_indices=torch.arange(len(train_labels)))


def reflect_pad4(image):
    """The released transforms.Lambda, named so that it pickles under any start method."""
    return F.pad(image.unsqueeze(0), (4, 4, 4, 4), mode="reflect").squeeze()


RELEASED_TRAIN_TRANSFORM = transforms.Compose([
    transforms.ToTensor(), transforms.Lambda(reflect_pad4), transforms.ToPILImage(),
    transforms.RandomCrop(32), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
    transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
])


class ReleasedCifar(Dataset):
    """torchvision's CIFAR10 item access (HWC uint8 array -> PIL image -> transform) over our images."""

    def __init__(self, images_uint8, labels):
        self.data = images_uint8.permute(0, 2, 3, 1).numpy()
        self.targets = labels.numpy()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return RELEASED_TRAIN_TRANSFORM(Image.fromarray(self.data[index])), self.targets[index]


# ---------------------------------------------------------------------------------------------
# Ours: trainer.Run
# ---------------------------------------------------------------------------------------------

def make_run(data, device, batch_size, meta_gradient, channels_last, amp):
    """A trainer.Run with trainer's defaults, on in-memory data."""
    args = build_parser("bench", "", ("ce",)).parse_args([
        "--device", device.type, "--batch-size", str(batch_size), "--num_classes", str(len(data.cls_num_list)),
        "--meta_gradient", meta_gradient, "--channels_last", str(channels_last), "--seed", str(SEED),
        "--data_root", "in-memory"] + ["--amp"] * amp)
    return Run(args, data)


def ours_compute_step(run, x, y, meta_batch=None):
    """Run.update on a prepared batch: a first-phase step, or a MetaSAug step when a meta batch is given."""
    epoch = PLAIN_EPOCH if meta_batch is None else run.args.meta_start
    run.update(x, y, epoch, *run.schedule(epoch)[1:], meta_batch)
    return len(y), 1


def steps(step, count):
    """`count` calls of a compute step, as one timed unit (images, steps)."""
    images = sum(step()[0] for _ in range(count))
    return images, count


def ours_data(run, num_batches):
    """The data of Run.train_step in the MetaSAug phase: a training and a meta batch per step, augmented."""
    epoch = run.args.meta_start
    batches = run.epoch_batches(epoch)[:num_batches]
    for iteration, index in enumerate(batches):
        run.augmented_batch(run.data.train_images, run.data.train_labels, index, run.stream(epoch), "augment",
                            epoch, iteration)
        run.meta_batch(epoch, iteration)
    return sum(map(len, batches)), len(batches)


def ours_epoch(run, epoch, num_batches):
    """The iterations of Run.fit (its logging, checkpoints and evaluation left out): Run.train_step."""
    batches = run.epoch_batches(epoch)[:num_batches]
    for iteration, index in enumerate(batches):
        run.train_step(epoch, iteration, index, *run.schedule(epoch)[1:])
    return sum(map(len, batches)), len(batches)


# ---------------------------------------------------------------------------------------------
# The released design
# ---------------------------------------------------------------------------------------------

class ReleasedDesign:
    """The loops of the released MetaSAug_LDAM_train.py, with this repository's network and loss.

    Hyper-parameters are taken from `args` (a trainer.Run's), so both sides do the same arithmetic.
    """

    def __init__(self, data_cpu, device, args):
        torch.manual_seed(args.seed)
        self.device, self.args, self.num_classes = device, args, len(data_cpu.cls_num_list)
        self.model = ResNet32(self.num_classes).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=args.momentum,
                                         nesterov=args.nesterov, weight_decay=args.weight_decay)
        self.criterion = MetaSAugLoss(ResNet32.feature_dim, self.num_classes, data_cpu.cls_num_list).to(device)
        self.train_loader = DataLoader(ReleasedCifar(data_cpu.train_images, data_cpu.train_labels),
                                       batch_size=args.batch_size, shuffle=True, **RELEASED_LOADER)
        self.meta_loader = DataLoader(ReleasedCifar(data_cpu.meta_images, data_cpu.meta_labels),
                                      batch_size=args.batch_size, shuffle=True, **RELEASED_LOADER)

    def next_meta_batch(self):
        """`next(iter(validation_loader))`: a new iterator, hence a new worker process, every step."""
        x, y = next(iter(self.meta_loader))
        return x.to(self.device), y.to(self.device)

    def plain_step(self, x, y):
        _, logits = self.model(x)
        return self._update(F.cross_entropy(logits, y), logits)

    def _update(self, loss, logits):
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss, logits

    def metasaug_step(self, x, y, meta_batch):
        """train_MetaSAug's body; `meta_batch()` is called where the released loop reads the meta set."""
        args, epoch = self.args, self.args.meta_start
        lookahead_lr = learning_rate(epoch, args.lr, args.lr_milestones)
        ratio = augmentation_ratio(args.lam, epoch, args.epochs)
        cv = self.criterion.estimator.covariance.detach().requires_grad_()
        copy = ResNet32(self.num_classes)
        copy.load_state_dict(self.model.state_dict())
        copy.to(self.device)
        _, logits = copy(x)
        loss = self.criterion(logits, copy.linear.weight, y, cv, ratio)
        params = dict(copy.named_parameters())
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        lookahead = {name: p - lookahead_lr * g for (name, p), g in zip(params.items(), grads)}
        x_meta, y_meta = meta_batch()
        _, meta_logits = functional_call(copy, lookahead, (x_meta,))
        grad_cv = torch.autograd.grad(F.cross_entropy(meta_logits, y_meta), cv)[0]
        new_cv = cv - self.args.meta_lr * grad_cv
        features, logits = self.model(x)
        loss = self.criterion(logits, self.model.linear.weight, y, new_cv, ratio)
        self.criterion.estimator.update(features.detach(), y)
        return self._update(loss, logits)

    def compute_step(self, x, y, meta_batch=None):
        """One step on a fixed batch, data excluded."""
        if meta_batch is None:
            self.plain_step(x, y)
        else:
            self.metasaug_step(x, y, lambda: meta_batch)
        return len(y), 1

    def data(self, num_batches):
        for x, y in islice(self.train_loader, num_batches):
            x, y = x.to(self.device), y.to(self.device)
            self.next_meta_batch()
        return self._span(num_batches)

    def epoch(self, num_batches, meta):
        """The released loop: fresh loader iterator, host-to-device copies, two .item() per step."""
        for x, y in islice(self.train_loader, num_batches):
            x, y = x.to(self.device), y.to(self.device)
            if meta:
                loss, logits = self.metasaug_step(x, y, self.next_meta_batch)
            else:
                loss, logits = self.plain_step(x, y)
            loss.item()  # the released AverageMeters read the loss and the accuracy every step
            (logits.argmax(1) == y).float().mean().item()
        return self._span(num_batches)

    def _span(self, num_batches):
        """(images, batches) that islice(train_loader, num_batches) yields."""
        batches = min(num_batches, len(self.train_loader))
        return min(batches * self.train_loader.batch_size, len(self.train_loader.dataset)), batches


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One timed unit (a step, or a span of batches) returning (training images, steps)."""
    run: Callable[[], tuple[int, int]]
    seconds: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    images: int = 0
    steps: int = 0
    peak_mib: float = 0.0


LIBC = ctypes.CDLL(None)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device):
    """Start a new peak; False where the kernel refuses (CPU peaks are then the process's so far).

    CPU: freed heap memory is handed back first (glibc malloc_trim), so that what earlier cases
    left cached does not count, then writing 5 to /proc/self/clear_refs resets the RSS high-water
    mark that ru_maxrss reads. Allocations of DataLoader workers (other processes) are not counted.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    if hasattr(LIBC, "malloc_trim"):
        LIBC.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class GpuUtilisation:
    """nvidia-smi samples every 100 ms, stamped on arrival so each case's windows can be averaged."""

    def __init__(self, device):
        self.samples = []
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        self.process = subprocess.Popen(["nvidia-smi", "-i", uuid, "--query-gpu=utilization.gpu",
                                         "--format=csv,noheader,nounits", "-lms", "100"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.samples.append((time.perf_counter(), int(line)))

    def mean(self, windows):
        inside = [value for t, value in self.samples if any(start <= t <= end for start, end in windows)]
        return statistics.mean(inside) if inside else None

    def close(self):
        self.process.terminate()
        self.process.wait()


def measure(cases, device, repeats, warmup):
    """Warm every case up, its last warm-up run measuring peak memory, then time them round-robin.

    Memory is kept out of the timed runs: resetting the peak hands freed memory back to the system,
    and the run after it would pay for faulting that memory in again.
    """
    for case in cases.values():
        for _ in range(warmup - 1):
            case.run()
        reset_peak_memory(device)
        case.run()
        synchronize(device)
        case.peak_mib = peak_memory_mib(device)
    for _ in range(repeats):
        for case in cases.values():
            synchronize(device)
            start = time.perf_counter()
            case.images, case.steps = case.run()
            synchronize(device)
            end = time.perf_counter()
            case.seconds.append(end - start)
            case.windows.append((start, end))


def summary(case, gpu):
    seconds = statistics.median(case.seconds)
    return dict(images_per_s=case.images / seconds, ms_per_step=1000 * seconds / case.steps,
                median_s=seconds, repeats_s=case.seconds, images=case.images, steps=case.steps,
                peak_memory_mib=case.peak_mib, gpu_utilisation_pct=gpu.mean(case.windows) if gpu else None)


# ---------------------------------------------------------------------------------------------
# Setting up, reporting
# ---------------------------------------------------------------------------------------------

def build_cases(data_cpu, device, args):
    """Every timed case, ours and released interleaved so that compared cases run back to back."""
    data = data_cpu.to(device)
    runs = {gradient: make_run(data, device, args.batch_size, gradient, args.channels_last, args.amp)
            for gradient in ("jvp", "double_backward")}
    ours, n, k = runs["jvp"], args.epoch_batches, args.steps
    meta_epoch = ours.args.meta_start
    x, y = ours.augmented_batch(data.train_images, data.train_labels, ours.epoch_batches(meta_epoch)[0],
                                ours.args.seed, "bench")
    meta_batch = ours.meta_batch(meta_epoch, 0)
    cases = {
        "ours/plain_step": Case(lambda: steps(lambda: ours_compute_step(ours, x, y), k)),
        "ours/metasaug_jvp": Case(lambda: steps(lambda: ours_compute_step(ours, x, y, meta_batch), k)),
        "ours/metasaug_double_backward": Case(lambda: steps(
            lambda: ours_compute_step(runs["double_backward"], x, y, meta_batch), k)),
        "ours/data_pipeline": Case(lambda: ours_data(ours, n)),
        "ours/epoch_plain": Case(lambda: ours_epoch(ours, PLAIN_EPOCH, n)),
        "ours/epoch_metasaug": Case(lambda: ours_epoch(ours, meta_epoch, n)),
    }
    if args.released_design:
        released = ReleasedDesign(data_cpu, device, ours.args)
        x_nchw, meta_nchw = x.contiguous(), tuple(t.contiguous() for t in meta_batch)
        cases.update({
            "released/plain_step": Case(lambda: steps(lambda: released.compute_step(x_nchw, y), k)),
            "released/metasaug_step": Case(lambda: steps(lambda: released.compute_step(x_nchw, y, meta_nchw), k)),
            "released/data_pipeline": Case(lambda: released.data(n)),
            "released/epoch_plain": Case(lambda: released.epoch(n, meta=False)),
            "released/epoch_metasaug": Case(lambda: released.epoch(n, meta=True)),
        })
    order = [key for name, (_, _, counterpart) in FIGURES.items()
             for key in (f"ours/{name}", f"released/{counterpart}") if key in cases]
    return {key: cases[key] for key in dict.fromkeys(order)}


def cpu_model():
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())


def machine(device):
    info = dict(cpu=cpu_model(), cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)),
                torch_threads=torch.get_num_threads(), torch=torch.__version__, torchvision=torchvision.__version__,
                python=platform.python_version(), device=str(device), commit=git_commit())
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def figures(cases, gpu, full_batches):
    """Per figure: both sides' summaries, ours/released throughput, and epoch seconds for epoch figures."""
    results = {}
    for name, (ours_measures, released_measures, counterpart) in FIGURES.items():
        ours = summary(cases[f"ours/{name}"], gpu)
        released = summary(cases[f"released/{counterpart}"], gpu) if f"released/{counterpart}" in cases else None
        results[name] = dict(ours_measures=ours_measures, released_measures=released_measures, ours=ours,
                             released=released, ratio=released and ours["images_per_s"] / released["images_per_s"])
        if name.startswith("epoch"):
            results[name]["epoch_s"] = {side: figure and figure["ms_per_step"] * full_batches / 1000
                                        for side, figure in (("ours", ours), ("released", released))}
    return results


def report(results, settings, info):
    lines = [f"machine  {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), torch {info['torch']} "
             f"({info['torch_threads']} threads), device {info.get('gpu', info['device'])}",
             f"data     {settings['data']}: {settings['train_images']} training images, {settings['meta_images']} meta, "
             f"batch {settings['batch_size']}, channels_last {settings['channels_last']}, amp {settings['amp']}",
             f"timing   median of {settings['repeats']} after {settings['warmup']} warm-up, round-robin; "
             f"compute-only figures over {settings['steps']} steps; data and "
             f"epoch figures over {settings['measured_batches']} of {settings['epoch_batches']} batches"
             + (", extrapolated to a full epoch" if settings["measured_batches"] < settings["epoch_batches"] else ""),
             f"memory   {settings['memory']} during each figure's last warm-up run, MiB "
             f"(before measuring: {settings['baseline_memory_mib']:.0f})", ""]
    gpu = info["device"].startswith("cuda")
    header = (f"{'figure':<28}{'ours img/s':>11}{'ms/step':>10}{'released img/s':>16}{'ms/step':>10}"
              f"{'ours/released':>15}{'ours MiB':>10}{'rel. MiB':>10}" + (f"{'GPU% ours':>11}{'rel.':>6}" if gpu else ""))
    lines.append(header)

    def number(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"

    for name, figure in results.items():
        ours, rel = figure["ours"], figure["released"] or {}
        lines.append(f"{name:<28}{number(ours['images_per_s']):>11}{number(ours['ms_per_step']):>10}"
                     f"{number(rel.get('images_per_s')):>16}{number(rel.get('ms_per_step')):>10}"
                     f"{number(figure['ratio'], 2):>15}{number(ours['peak_memory_mib'], 0):>10}"
                     f"{number(rel.get('peak_memory_mib'), 0):>10}"
                     + (f"{number(ours['gpu_utilisation_pct'], 0):>11}{number(rel.get('gpu_utilisation_pct'), 0):>6}"
                        if gpu else ""))
    for name in ("epoch_plain", "epoch_metasaug"):
        seconds = results[name]["epoch_s"]
        lines.append(f"{name}: one epoch of {settings['epoch_batches']} batches takes {number(seconds['ours'])} s ours, "
                     f"{number(seconds['released'])} s released")
    return "\n".join(lines)


def parse_args(argv=None):
    p = OneLineParser(prog="bench_train.py", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda where available")
    p.add_argument("--data_root", default=None,
                   help="image folders {train,test}/<class>/* or CIFAR python files, split as CIFAR-10-LT "
                        "(imbalance 100); default: synthetic images of the same size")
    p.add_argument("--synthetic-train-size", type=int, default=None,
                   help="about this many synthetic training images (default: CIFAR-10-LT's 12,380)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of every case, median reported (default: 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs of every case first, the last one measuring peak memory (default: 1)")
    p.add_argument("--steps", type=int, default=5,
                   help="steps per timed run of the compute-only figures (default: 5)")
    p.add_argument("--batch-size", type=int, default=100, help="default: 100")
    p.add_argument("--epoch-batches", type=int, default=None,
                   help="batches timed by the data and epoch figures, extrapolated to an epoch (default: all)")
    p.add_argument("--released-design", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the released design (default: on)")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="our network and batches in channels_last (default: trainer.py's default)")
    p.add_argument("--amp", action="store_true",
                   help="ours with trainer.py's --amp (bf16 autocast); the released design stays in float32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 avoids OpenMP stalls on a busy machine")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    positive = (args.repeats, args.warmup, args.steps, args.batch_size, args.epoch_batches, args.threads,
                args.synthetic_train_size)
    if any(n is not None and n < 1 for n in positive):
        p.error("--repeats, --warmup, --steps, --batch-size, --epoch-batches, --threads and "
                "--synthetic-train-size must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.channels_last is None:
        args.channels_last = build_parser("bench", "", ("ce",)).get_default("channels_last")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = (build_dataset(args.data_root, imb_factor=0.01, workers=os.cpu_count()) if args.data_root
            else synthetic_data(args.synthetic_train_size))
    full_batches = math.ceil(len(data.train_labels) / args.batch_size)
    args.epoch_batches = min(args.epoch_batches or full_batches, full_batches)
    cases = build_cases(data, device, args)  # trainer.Run turns cudnn.benchmark on, as the released script

    fresh_peaks = reset_peak_memory(device)
    baseline_mib = peak_memory_mib(device)
    gpu = GpuUtilisation(device) if device.type == "cuda" and shutil.which("nvidia-smi") else None
    try:
        measure(cases, device, args.repeats, args.warmup)
    finally:
        if gpu:
            gpu.close()

    memory = ("CUDA max_memory_allocated" if device.type == "cuda" else
              "peak RSS of this process (DataLoader workers excluded)" if fresh_peaks else
              "peak RSS of this process so far (the high-water mark could not be reset)")
    settings = dict(data=args.data_root or "synthetic", train_images=len(data.train_labels),
                    meta_images=len(data.meta_labels), batch_size=args.batch_size, channels_last=args.channels_last, amp=args.amp,
                    repeats=args.repeats, warmup=args.warmup, steps=args.steps, measured_batches=args.epoch_batches,
                    epoch_batches=full_batches, memory=memory, baseline_memory_mib=baseline_mib,
                    released_loader=RELEASED_LOADER)
    results, info = figures(cases, gpu, full_batches), machine(device)
    print(report(results, settings, info), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=info, settings=settings, figures=results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
