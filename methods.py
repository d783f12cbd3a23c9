"""The training methods (``--method``) and the rows of the paper's CIFAR tables they reproduce.

The one place that maps a method and base loss to a paper row: the training scripts' ``--help``,
``tools/run_table.py`` (which runs a table's rows) and ``tools/report.py`` (which names them) read it.
The paper's numbers for these rows are in ``tools/paper_results.json``.
"""
from dataclasses import dataclass

CE_SCRIPT, LDAM_SCRIPT = "MetaSAug_CE_train.py", "MetaSAug_LDAM_train.py"

METHODS = {  # what each method trains; the rows it gives are in ROWS
    "metasaug": "plain CE until --meta_start, then MetaSAug, class-balanced",
    "metasaug_no_reweight": "as metasaug, without class weights",
    "isda": "plain CE until --meta_start, then ISDA with the covariance estimated before each batch (MetaSAug "
            "without its meta step), class-balanced",
    "plain": "the base loss alone, every epoch",
    "cb": "the base loss with class-balanced weights, every epoch",
    "drw": "the base loss, class-balanced weights from --meta_start (deferred re-weighting)",
}
AUGMENTED = ("metasaug", "metasaug_no_reweight", "isda")  # ISDA-augmented logits in the second phase
META_STEPPING = ("metasaug", "metasaug_no_reweight")      # a meta step per iteration in the second phase


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
EXTRA_ROW_NAMES = {("cb", "ldam"): "Class-balanced LDAM loss", ("drw", "ce"): "CE-DRW", ("drw", "focal"): "Focal-DRW"}


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


def method_help():
    """``--method``'s help: each method with the paper rows it gives."""
    parts = []
    for method, text in METHODS.items():
        rows = [f"'{row.name}' ({row.loss})" for row in ROWS.values() if row.method == method]
        parts.append(f"{method}: {text}" + (f" - paper rows {', '.join(rows)}" if rows else ""))
    return "; ".join(parts)
