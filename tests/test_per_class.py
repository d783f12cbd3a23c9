"""tools/per_class.py: runs' per-class accuracy side by side, on hand-made result.json files."""
import json

from tools import per_class


def write(folder, final, per_class_accuracy, classes=("cat", "dog", "frog"), counts=(5, 50, 20)):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(dict(
        class_names=list(classes), cls_num_list=list(counts), final_top1_error=final, best_top1_error=final - 1,
        per_class_accuracy=per_class_accuracy, best_per_class_accuracy=[a + 1 for a in per_class_accuracy])))
    return folder


def test_classes_by_training_images_with_each_run_s_difference_from_the_first(tmp_path, capsys):
    ce = write(tmp_path / "ce_seed1", 30.0, [60.0, 90.0, 70.0])
    meta = write(tmp_path / "metasaug_ce_seed1", 25.5, [75.5, 85.0, 70.0])
    assert per_class.main([str(ce), str(meta / "result.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| class | training images | ce_seed1 | metasaug_ce_seed1 | Δ metasaug_ce_seed1 |"
    assert lines[2:] == ["| dog | 50 | 90.0 | 85.0 | -5.0 |", "| frog | 20 | 70.0 | 70.0 | +0.0 |",
                         "| cat | 5 | 60.0 | 75.5 | +15.5 |", "| top-1 error | | 30.00 | 25.50 | -4.50 |"]
    assert per_class.main([str(ce), str(meta), "--best"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "| top-1 error | | 29.00 | 24.50 | -4.50 |"


def test_refuses_runs_it_cannot_compare(tmp_path, capsys):
    ce = write(tmp_path / "ce", 30.0, [60.0, 90.0, 70.0])
    other = write(tmp_path / "other", 30.0, [60.0, 90.0, 70.0], classes=("a", "b", "c"))
    for runs in ([ce, other], [ce, tmp_path / "absent"]):
        assert per_class.main([str(run) for run in runs]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and ("other classes" in error or "is not a result.json" in error)


def test_training_images_of_each_run_where_their_subsets_differ(tmp_path, capsys):
    ce = write(tmp_path / "ce_seed1", 30.0, [60.0, 90.0, 70.0])
    ldam = write(tmp_path / "ldam_seed1", 28.0, [62.0, 91.0, 70.0], counts=(5, 51, 20))
    assert per_class.main([str(ce), str(ldam)]) == 0
    assert capsys.readouterr().out.splitlines()[2:4] == ["| dog | 50 / 51 | 90.0 | 91.0 | +1.0 |",
                                                         "| frog | 20 | 70.0 | 70.0 | +0.0 |"]
