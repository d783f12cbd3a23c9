"""The training methods (``--method``), what each computes, and the rows of the paper's tables they give.

A method is data: the trainer, the first-phase check, ``tools/run_table.py`` (which runs a table's rows)
and ``tools/report.py`` (which names them) read its ``Method`` record; no other module tests a method's
name. The paper's numbers for the rows are in ``tools/paper_results.json``. Nothing here imports torch
(``run_table.py --help`` reads it).
"""
from dataclasses import dataclass

CE_SCRIPT, LDAM_SCRIPT = "MetaSAug_CE_train.py", "MetaSAug_LDAM_train.py"
WEIGHTS = ("none", "class-balanced", "deferred")


@dataclass(frozen=True)
class Method:
    """What one ``--method`` trains. An ``augmented`` method trains plain cross-entropy before
    ``--meta_start`` (whatever its base loss, as released: the first phase that CE and the augmented rows
    of one setting share) and the base loss on ISDA-augmented logits from then on, with a meta step per
    iteration if ``meta_step``; the others train the base loss every epoch. ``weights``: the loss's class
    weights, "none", "class-balanced" or "deferred" (class-balanced from ``--meta_start`` on).
    ``label``: the second phase's name in the epoch lines (None: the base loss's name throughout)."""
    summary: str
    weights: str
    augmented: bool = False
    meta_step: bool = False
    label: str = None

    @property
    def second_phase(self):
        """Whether the epochs from --meta_start on train differently from those before."""
        return self.augmented or self.weights == "deferred"


METHODS = {  # the rows each gives are in ROWS
    "metasaug": Method("plain CE until --meta_start, then MetaSAug, class-balanced", "class-balanced",
                       augmented=True, meta_step=True, label="MetaSAug"),
    "metasaug_no_reweight": Method("as metasaug, without class weights", "none", augmented=True, meta_step=True,
                                   label="MetaSAug w/o re-weighting"),
    "isda": Method("plain CE until --meta_start, then ISDA with the covariance estimated before each batch "
                   "(MetaSAug without its meta step), class-balanced", "class-balanced", augmented=True,
                   label="ISDA"),
    "plain": Method("the base loss alone, every epoch", "none"),
    "cb": Method("the base loss with class-balanced weights, every epoch", "class-balanced"),
    "drw": Method("the base loss, class-balanced weights from --meta_start (deferred re-weighting)", "deferred",
                  label="deferred re-weighting"),
}


@dataclass(frozen=True)
class Row:
    """One paper row: the run-name stem, the row's name in the paper, and how to train it (``recipe``: the
    LDAM script's --recipe; the paper ran its LDAM baselines with Cao et al.'s code)."""
    stem: str
    name: str
    script: str
    method: str
    loss: str
    recipe: str = "released"

    def flags(self):
        flags = ["--method", self.method] + (["--loss", self.loss] if self.script == CE_SCRIPT else [])
        return flags + (["--recipe", self.recipe] if self.recipe != "released" else [])


ROWS = {row.stem: row for row in (
    Row("ce", "Cross-entropy training", CE_SCRIPT, "plain", "ce"),
    Row("cb_ce", "Class-balanced cross-entropy loss", CE_SCRIPT, "cb", "ce"),
    Row("metasaug_ce", "MetaSAug with cross-entropy loss", CE_SCRIPT, "metasaug", "ce"),
    Row("focal", "Focal loss", CE_SCRIPT, "plain", "focal"),
    Row("cb_focal", "Class-balanced focal loss", CE_SCRIPT, "cb", "focal"),
    Row("metasaug_focal", "MetaSAug with focal loss", CE_SCRIPT, "metasaug", "focal"),
    Row("ldam", "LDAM loss", LDAM_SCRIPT, "plain", "ldam", recipe="cao2019"),
    Row("ldam_drw", "LDAM-DRW", LDAM_SCRIPT, "drw", "ldam", recipe="cao2019"),
    Row("metasaug_ldam", "MetaSAug with LDAM loss", LDAM_SCRIPT, "metasaug", "ldam"),
    Row("metasaug_no_reweight", "MetaSAug w/o re-weighting", CE_SCRIPT, "metasaug_no_reweight", "ce"),
    Row("isda", "MetaSAug w/o meta-learning", CE_SCRIPT, "isda", "ce"),
)}
# Rows a method and base loss give outside the paper's tables, named for the report.
EXTRA_ROW_NAMES = {("cb", "ldam"): "Class-balanced LDAM loss", ("drw", "ce"): "CE-DRW", ("drw", "focal"): "Focal-DRW",
                   ("plain", "la"): "Logit-adjusted CE (Menon et al. 2021; not in the paper)",
                   ("metasaug", "la"): "MetaSAug with logit-adjusted CE (not in the paper)"}


@dataclass(frozen=True)
class Table:
    dataset: str
    imb_factors: tuple
    stems: tuple           # its rows, in the paper's order
    labels: tuple = ()     # (stem, label) where the table names a row otherwise (Table 5: "MetaSAug")

    def label(self, name):
        """The table's name for the row the paper elsewhere calls ``name``."""
        return {ROWS[stem].name: label for stem, label in self.labels}.get(name, name)


TABLES = {
    "table1": Table("cifar10", (0.005, 0.01, 0.02, 0.05, 0.1),
                    ("ce", "cb_ce", "metasaug_ce", "focal", "cb_focal", "metasaug_focal", "ldam", "ldam_drw",
                     "metasaug_ldam")),
    "table2": Table("cifar100", (0.005, 0.01, 0.02, 0.05, 0.1),
                    ("ce", "cb_ce", "metasaug_ce", "focal", "cb_focal", "metasaug_focal", "ldam", "ldam_drw",
                     "metasaug_ldam")),
    "table5": Table("cifar10", (0.01, 0.02, 0.05), ("metasaug_no_reweight", "isda", "metasaug_ce"),
                    labels=(("metasaug_ce", "MetaSAug"),)),
}


RECIPE_LABELS = {"released": "MetaSAug's recipe", "cao2019": "Cao et al.'s recipe"}


def row_name(method, loss, recipe="released"):
    """The paper's name of the row ``method`` with base ``loss`` and ``recipe`` trains; a run of the same
    method and loss under another recipe than the paper's gets the recipe in brackets."""
    for row in ROWS.values():
        if (row.method, row.loss) == (method, loss):
            return row.name if row.recipe == recipe else f"{row.name} ({RECIPE_LABELS.get(recipe, recipe)})"
    name = EXTRA_ROW_NAMES.get((method, loss), f"{method} / {loss}")
    return name if recipe == "released" else f"{name} ({RECIPE_LABELS.get(recipe, recipe)})"


# Short names of the CIFAR-10-LT rows, in the order of the results grid (tools/report.py --format grid) and for
# legends; the paper calls ISDA w/o meta-learning "MetaSAug w/o meta-learning" (Table 5).
SHORT_NAMES = {"Cross-entropy training": "CE", "Class-balanced cross-entropy loss": "CB-CE",
               ROWS["isda"].name: "ISDA w/o meta-learning", "MetaSAug with cross-entropy loss": "MetaSAug-CE",
               "MetaSAug w/o re-weighting": "MetaSAug w/o re-weighting", "Focal loss": "Focal",
               "Class-balanced focal loss": "Class-balanced focal", "MetaSAug with focal loss": "MetaSAug-focal",
               "LDAM loss": "LDAM", "LDAM-DRW": "LDAM-DRW", "MetaSAug with LDAM loss": "MetaSAug-LDAM",
               EXTRA_ROW_NAMES["plain", "la"]: "Logit-adjusted CE"}


def short_name(name):
    """A row's short name (SHORT_NAMES), or its full name where it has none."""
    return SHORT_NAMES.get(name, name)


def method_help():
    """``--method``'s help: each method with the paper rows it gives."""
    parts = []
    for name, method in METHODS.items():
        rows = [f"'{row.name}' ({row.loss})" for row in ROWS.values() if row.method == name]
        parts.append(f"{name}: {method.summary}" + (f" - paper rows {', '.join(rows)}" if rows else ""))
    return "; ".join(parts)


def meta_stepping():
    """The names of the methods that take a meta step."""
    return tuple(name for name, method in METHODS.items() if method.meta_step)


# The large-scale runs (ImageNet_iNat/train.py): which cells of Tables 3, 4 and 6 a run fills, by dataset,
# backbone and stage (stage 1 trains the whole network with plain cross-entropy, the papers' CE rows; stage 2
# is MetaSAug).
BACKBONES = {"resnet50": "ResNet-50", "resnet101": "ResNet-101", "resnet152": "ResNet-152"}


def large_scale_cells(dataset, arch, stage):
    """{table: (row, column)} of the paper's large-scale tables that a run fills."""
    cells = {}
    if dataset == "ImageNet_LT":
        if arch == "resnet50":
            cells["table3"] = ("MetaSAug with CE loss" if stage == 2 else "CE training", dataset)
        if stage == 2 and arch in BACKBONES:
            cells["table6"] = (BACKBONES[arch], "MetaSAug")
    elif arch == "resnet50":
        cells["table4"] = ("MetaSAug" if stage == 2 else "CE", dataset)
    return cells
