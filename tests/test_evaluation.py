"""Evaluation: TTA views, ensembles, metrics, in- and cross-dataset evaluation, the runs later chapters take from the factorial."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from fadenet.config import ModelConfig, load_config
from fadenet.evaluation import cumulative_scores, mae_per_group, predictions_table
from fadenet.model import predict_probs, rescale, tta_views
from fadenet.evaluation import ablation
from fadenet.evaluation.evaluate import evaluate, load_ensemble, save_predictions
from fadenet.model import build_model
from fadenet.training import CheckpointError, train
from fadenet.training.recipe import training_rows
from fadenet.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def sharp_net(seed: int):
    """A random network whose outputs depend visibly on the input: the freshly initialised head
    gives nearly uniform distributions, against which TTA equivalences would prove little."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(pretrained="none")).eval()
    # pooled features of a random backbone are ~1e-3, so the head is scaled up to give logits
    # with a spread of a few units
    torch.nn.init.normal_(model.head[0].weight, std=0.1)
    torch.nn.init.normal_(model.head[-1].weight, std=200.0)
    return model


@pytest.fixture(scope="module")
def net():
    return sharp_net(0)


@pytest.fixture(scope="module")
def faces_u8():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)


# ---- TTA ----------------------------------------------------------------------------------

def test_views_per_mode():
    x = torch.randn(2, 3, 32, 32)
    assert [len(tta_views(x, m)) for m in ("none", "flip", "multi")] == [1, 2, 6]
    assert torch.equal(tta_views(x, "flip")[1], x.flip(-1))
    with pytest.raises(ValueError, match="TTA mode 'twice'"):
        tta_views(x, "twice")


def test_rescale_keeps_the_size_and_zooms_about_the_centre():
    x = torch.zeros(1, 1, 40, 40)
    x[..., 18:22, 18:22] = 1.0  # a centred square
    assert rescale(x, 1.0) is x
    for scale in (0.9, 1.1):
        y = rescale(x, scale)
        assert y.shape == x.shape
        assert y[..., 20, 20].item() == pytest.approx(1.0, abs=0.05)
        assert y[..., 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert rescale(x, 1.1).sum() > x.sum() > rescale(x, 0.9).sum()


def test_flip_of_a_mirror_symmetric_face_equals_no_tta(net):
    half = np.random.default_rng(1).integers(0, 256, size=(3, 64, 32, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)
    rows = np.arange(3)
    np.testing.assert_allclose(predict_probs(net, symmetric, rows, "flip"),
                               predict_probs(net, symmetric, rows, "none"), atol=1e-6)
    asymmetric = np.concatenate([half, half[::-1]], axis=2)  # left and right halves of different faces
    assert np.abs(predict_probs(net, asymmetric, rows, "flip") - predict_probs(net, asymmetric, rows, "none")).max() > 1e-3


def test_multi_scale_restricted_to_scale_one_equals_flip(net, faces_u8):
    rows = np.arange(len(faces_u8))
    np.testing.assert_allclose(predict_probs(net, faces_u8, rows, "multi", scales=(1.0,)),
                               predict_probs(net, faces_u8, rows, "flip"), atol=1e-6)


def test_multi_scale_is_the_mean_of_its_six_views(net, faces_u8):
    rows = np.arange(len(faces_u8))
    multi = predict_probs(net, faces_u8, rows, "multi", scales=(0.9, 1.0, 1.1))
    per_scale = [predict_probs(net, faces_u8, rows, "multi", scales=(s,)) for s in (0.9, 1.0, 1.1)]
    np.testing.assert_allclose(multi, np.mean(per_scale, axis=0), atol=1e-6)
    assert np.abs(per_scale[0] - per_scale[2]).max() > 1e-3, "scales 0.9 and 1.1 should differ"


def test_an_ensemble_of_one_model_is_that_model_and_of_two_their_mean(net, faces_u8):
    other = sharp_net(1)
    rows = np.array([4, 0, 2])
    one = predict_probs(net, faces_u8, rows, "flip")
    np.testing.assert_allclose(predict_probs([net], faces_u8, rows, "flip"), one, atol=1e-7)
    assert np.abs(one - predict_probs(other, faces_u8, rows, "flip")).max() > 1e-3
    two = predict_probs([net, other], faces_u8, rows, "flip")
    np.testing.assert_allclose(two, (one + predict_probs(other, faces_u8, rows, "flip")) / 2, atol=1e-6)
    np.testing.assert_allclose(two.sum(1), 1.0, atol=1e-5)


def test_prediction_leaves_a_training_model_in_training_mode(faces_u8):
    model = build_model(ModelConfig(pretrained="none")).train()
    predict_probs(model, faces_u8, np.arange(2))
    assert model.training


# ---- metrics ------------------------------------------------------------------------------

def test_predictions_table_on_a_hand_computed_case():
    probs = np.zeros((2, 81))
    probs[0, [20, 22]] = 0.5   # mean 21, std 1
    probs[1, 60] = 1.0         # mean 60, std 0
    table = predictions_table(probs, np.array([25, 58]), ["a.jpg", "b.jpg"])
    assert list(table["path"]) == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(table["predicted_age"], [21, 60])
    np.testing.assert_allclose(table["std"], [1, 0], atol=1e-7)
    np.testing.assert_allclose(table["error"], [-4, 2])
    assert list(table["age_group"]) == ["20-29", "50-59"]
    groups = mae_per_group(table).set_index("age_group")
    assert groups.loc["20-29", "MAE"] == 4 and groups.loc["50-59", "mean error"] == 2


def test_cumulative_score_is_monotone_and_reaches_one():
    table = pd.DataFrame({"abs_error": [0.0, 0.5, 1.2, 3.0, 7.5, 9.9]})
    cs = cumulative_scores(table)
    assert list(cs.index) == list(range(11))
    assert cs[0] == pytest.approx(1 / 6) and cs[1] == pytest.approx(2 / 6) and cs[3] == pytest.approx(4 / 6)
    assert cs.is_monotonic_increasing and cs[10] == 1.0


# ---- evaluating checkpoints ---------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    (base / "empty").mkdir()
    cfg = load_config("smoke", f"data.root={base / 'empty'}", f"data.cache_dir={base / 'cache'}",
                      f"runs_dir={base / 'runs'}")
    return train(cfg, progress=False), cfg


def test_evaluate_in_dataset_agrees_with_the_trainers_test_mae(smoke_run):
    run, _ = smoke_run
    result = evaluate([run.best], tta="none", progress=False)
    assert not result.cross_dataset and result.part == "test" and result.protocol == "80-10-10"
    assert len(result.table) == run.meta["test"]
    assert result.summary()["MAE"] == pytest.approx(run.meta["test_mae"], abs=1e-4)
    assert "MAE" in result.describe() and "test faces of SYNTHETIC" in result.describe()


def test_evaluate_other_parts_and_tta(smoke_run):
    run, _ = smoke_run
    val = evaluate([run.best], part="val", progress=False)
    assert val.summary()["MAE"] == pytest.approx(run.meta["best_val_mae"], abs=1e-4)
    multi = evaluate([run.best], tta="multi", progress=False)
    assert len(multi.table) == run.meta["test"] and multi.tta == "multi"


def test_cross_dataset_evaluation_uses_every_face_of_the_other_dataset(smoke_run, tmp_path, image_writer):
    run, _ = smoke_run
    folder = tmp_path / "UTKFace"
    ages = [3, 25, 47, 70, 25]
    for i, age in enumerate(ages):
        image_writer(folder / f"{age}_{i % 2}_0_2017010{i}.jpg.chip.jpg", (40 * i, 90, 200 - 30 * i), size=80)
    (folder / "readme.txt").write_text("not a face")
    result = evaluate([run.best], source="utkface", data_root=tmp_path, progress=False)
    assert result.cross_dataset and result.protocol == "cross-dataset" and result.part == "all"
    assert sorted(result.table["true_age"]) == sorted(ages)
    out = save_predictions(result)
    assert out.parent == run.folder and "utkface" in out.name
    assert len(pd.read_csv(out)) == len(ages)


def test_the_evaluate_command_prints_mae_and_writes_predictions(smoke_run, tmp_path):
    run, _ = smoke_run
    out = tmp_path / "preds.csv"
    result = subprocess.run([sys.executable, "-m", "fadenet", "evaluate", "--checkpoint", str(run.best),
                             "--checkpoint", str(run.best), "--tta", "flip", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MAE" in result.stdout and "CS@5" in result.stdout and "2-model ensemble" in result.stdout
    table = pd.read_csv(out)
    assert {"path", "true_age", "predicted_age", "std", "abs_error"} <= set(table.columns)
    missing = subprocess.run([sys.executable, "-m", "fadenet", "evaluate", "--checkpoint", str(tmp_path / "no.pt")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: checkpoint {tmp_path / 'no.pt'} does not exist"]


def test_an_ensemble_needs_one_input_framing(smoke_run, tmp_path):
    run, cfg = smoke_run
    other = train(cfg.override({"data.size": 72, "runs_dir": str(tmp_path)}), progress=False)
    with pytest.raises(CheckpointError, match="72px"):
        load_ensemble([run.best, other.best])


# ---- the ablation grid --------------------------------------------------------------------

def test_training_fraction_is_a_fixed_age_stratified_share_of_the_split(smoke_run):
    from fadenet.data import load_split, prepare
    _, cfg = smoke_run
    faces = prepare(cfg, progress=False)
    split = load_split(faces, cfg)
    rows = training_rows(faces, split, 0.5, 42)
    assert len(rows) == round(len(split.train) / 2) and set(rows) <= set(split.train)
    assert np.array_equal(rows, training_rows(faces, split, 0.5, 42))
    assert abs(np.median(faces.ages[rows]) - np.median(faces.ages[split.train])) <= 3
    assert training_rows(faces, split, 1.0, 42) is split.train


def test_seed_runs_train_each_run_once_and_reuse_the_factorials_runs(smoke_run, monkeypatch):
    from fadenet.data import load_split, prepare
    from fadenet.evaluation.factorial import cell_config, cells
    _, cfg = smoke_run
    cfg = cfg.override({"eval.ablation_budget": 0.5})
    faces = prepare(cfg, progress=False)
    split = load_split(faces, cfg)
    baseline = cells()[0]
    runs = ablation.seed_runs(cfg, faces, split, baseline, seeds=(42, 1337), progress=False)
    assert list(zip(runs["network"], runs["seed"])) == [("baseline", 42), ("baseline", 1337)]
    assert runs["run"].is_unique and (runs["trained on"] == round(len(split.train) / 2)).all()
    # the factorial's run of the same cell and seed is the same run folder, not a second training
    assert train(cell_config(cfg, baseline, 1337)).meta["run_id"] == runs["run"].iloc[1]
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a finished run was trained again"))
    again = ablation.seed_runs(cfg, faces, split, baseline, seeds=(42, 1337), progress=False)
    pd.testing.assert_frame_equal(again, runs)


def test_best_by_validation_picks_the_lowest_mean_validation_mae_not_test(monkeypatch):
    from fadenet.evaluation.factorial import cells
    rows = [{**cell, "seed": seed, "val_mae": 5.0 + 0.01 * k + (0.3 if k == 5 and seed == 2 else 0.0),
             "test_mae": 6.0 - 0.01 * k} for k, cell in enumerate(cells()) for seed in (1, 2)]
    rows[2 * 5]["val_mae"] = 4.0  # cell 5: mean (4.0 + 5.35) / 2 = 4.675, the lowest; test favours cell 15
    monkeypatch.setattr(ablation, "run_factorial", lambda cfg, faces, split: pd.DataFrame(rows))
    assert ablation.best_by_validation(None, None, None) == cells()[5]


def test_factorial_networks_are_built_on_the_backbone_training_resolves(monkeypatch):
    import fadenet.resolve as resolve_module
    from fadenet.evaluation.factorial import cell_config
    from fadenet.resolve import resolve
    monkeypatch.setattr(resolve_module, "resolve_backbone", lambda cfg: "mobilenet_v2")
    cell = {"ca": False, "msff": False, "spp": True, "dldl_v2": False}
    net = resolve(cell_config(load_config("smoke", "model.backbone=auto"), cell, 0)).network(weights=False)
    assert net.meta["backbone"] == "mobilenet_v2" and net.spp is not None and net.fusion is None




def test_group_findings_name_the_hardest_group_and_the_pull_toward_the_middle():
    from fadenet.evaluation.report import group_findings
    table = pd.DataFrame({"age_group": ["0-9", "30-39", "70-80"], "faces": [10, 1200, 30],
                          "MAE": [2.5, 4.0, 7.25], "mean error": [1.5, 0.2, -6.0]})
    assert group_findings(table) == [
        "MAE is lowest at ages 0-9 (2.50 years, 10 faces) and highest at ages 70-80 (7.25, 30 faces).",
        "Predicted too old by more than 1 year on average: ages 0-9 (+1.5).",
        "Predicted too young by more than 1 year on average: ages 70-80 (-6.0).",
        "The youngest are aged up and the oldest aged down: predictions are pulled toward the middle of the age range."]
    assert len(group_findings(table.assign(**{"mean error": [0.5, 0.2, -0.5]}))) == 1


def test_protocol_findings_compare_kfold_with_the_split_at_equal_training_faces():
    from fadenet.evaluation.report import protocol_findings
    kfold = [5.6, 5.8, 5.7, 5.9, 5.5]  # mean 5.7, sd 0.158
    table = pd.DataFrame([
        {"protocol": "80-10-10", "rotation": "", "train / val / test faces": "10,656 / 1,333 / 1,333", "test MAE": "5.300"},
        {"protocol": "80-10-10, training faces as many as kfold's", "rotation": "",
         "train / val / test faces": "7,993 / 1,333 / 1,333", "test MAE": "5.400"},
        *[{"protocol": "kfold", "rotation": r, "train / val / test faces": "7,994 / 2,664 / 2,664",
           "test MAE": f"{v:.3f}"} for r, v in enumerate(kfold)],
        {"protocol": "kfold", "rotation": "mean ± std", "train / val / test faces": "", "test MAE": "5.700 ± 0.158"}])
    first, second = protocol_findings(table)
    assert first == ("At equal training faces the 80-10-10 split scores 5.400 (7,993 / 1,333 / 1,333 train / val / "
                     "test faces) and the five kfold rotations 5.700 ± 0.158: a gap of +0.300 years, within two "
                     "standard deviations of the rotations.")
    assert "not comparable" in second and "5.300" in second


def test_chapter05_summary_states_the_tta_and_ensemble_gains_from_the_seed_table():
    from fadenet.evaluation.report import chapter_summary
    seeds = pd.DataFrame({"model": ["seed 42", "seed 1337", "ensemble"], "test MAE, TTA none": [5.40, 5.50, 5.30],
                          "test MAE, TTA flip": [5.35, 5.40, 5.25], "test MAE, TTA multi": [5.20, 5.35, 5.10]})
    groups = pd.DataFrame({"age_group": ["0-9", "70-80"], "faces": [10, 30], "MAE": [2.5, 7.25], "mean error": [0.0, 0.0]})
    assert chapter_summary(seeds, groups).splitlines() == [
        "- TTA flip lowers a single model's test MAE by 0.050 to 0.100 years (2 models).",
        "- TTA multi lowers a single model's test MAE by 0.150 to 0.200 years (2 models).",
        "- The ensemble of 2 seeds with multi-scale TTA scores 5.100, 0.300 years better than the best single "
        "model without TTA (5.400).",
        "- MAE is lowest at ages 0-9 (2.50 years, 10 faces) and highest at ages 70-80 (7.25, 30 faces)."]
    worse = seeds.assign(**{"test MAE, TTA flip": [5.45, 5.40, 5.25]})
    assert chapter_summary(worse, groups).splitlines()[0] == (
        "- TTA flip changes a single model's test MAE by -0.100 to +0.050 years (2 models).")


def test_fairness_findings_name_each_gender_and_the_worst_and_best_cell():
    from fadenet.evaluation.report import chapter_summary, fairness_findings
    row = lambda g, a, n, m, b: {"gender": g, "ages": a, "faces": n, "MAE": m, "MAE low": m - 0.5,
                                 "MAE high": m + 0.5, "bias": b}
    fair = pd.DataFrame([row("female", "0-12", 40, 2.0, 0.5), row("female", "60+", 20, 7.0, -4.0),
                         row("female", "all", 60, 3.5, -1.0), row("male", "0-12", 30, 3.0, 1.0),
                         row("male", "all", 30, 3.0, 1.0)])
    expected = ("By person, the model `predict` uses: female MAE 3.50 (3.00 to 4.00), bias -1.00, male MAE 3.00 (2.50 to 3.50), bias "
                "+1.00; worst cell female 60+ (MAE 7.00, 6.50 to 7.50, 20 faces), 5.00 years above the best, "
                "female 0-12 (2.00).")
    assert fairness_findings(fair) == expected
    seeds = pd.DataFrame({"model": ["seed 42"], "test MAE, TTA none": [5.0]})
    groups = pd.DataFrame({"age_group": ["0-9"], "faces": [10], "MAE": [2.5], "mean error": [0.0]})
    assert chapter_summary(seeds, groups, fair=fair).splitlines()[-1] == f"- {expected}"


def test_literature_rows_name_split_and_subject_exclusivity_and_list_a_model_once():
    from fadenet.evaluation.report import LITERATURE, literature_table, measured_rows
    cfg = load_config("smoke")
    seeds = pd.DataFrame({"model": ["seed 42", "seed 1337", "ensemble"], "test MAE, TTA none": [5.4, 5.5, 5.3],
                          "test MAE, TTA multi": [5.2, 5.3, 5.1]})
    full = {"method": "FADE-Net, chapter 03 model", "backbone": "mobilenet_v2", "parameters": 4_841_463,
            "tta": {"none": 5.4, "multi": 5.2}, "same_as_first_seed": True}
    rows = measured_rows(cfg, "aaf", "FADE-Net", "mobilenet_v2", seeds, None, 4_841_463, subjects=False, full=full)
    table = literature_table(rows)
    measured = table.iloc[len(LITERATURE):]
    # chapter 03's model is the first seed's run: its no-TTA row appears once, not also as "seed 42"
    assert measured["method"].tolist() == ["FADE-Net, chapter 03 model, TTA none", "FADE-Net, chapter 03 model, TTA multi",
                                           "FADE-Net (this workbook), ensemble of 2 seeds, TTA multi"]
    assert set(measured["subject-exclusive"]) == {"no: All-Age-Faces (AAF) names no subjects"}
    assert not table.duplicated(["method", "dataset", "split"]).any()
    assert table.set_index("method").loc["ResNet-50 / FaRL (unified benchmark)", "subject-exclusive"] == "yes"
    again = measured_rows(cfg, "aaf", "FADE-Net", "mobilenet_v2", seeds, None, 1, subjects=True,
                          full={**full, "same_as_first_seed": False})
    assert [r["method"] for r in again][-1] == "FADE-Net (this workbook), seed 42, no TTA"
    assert {r["subject-exclusive"] for r in again} == {"yes"}


def test_error_figure_keeps_its_bar_labels_inside_their_panel():
    import matplotlib
    matplotlib.use("Agg")
    from fadenet.evaluation.report import error_figures
    ages = np.array([5, 15, 25, 35, 45, 55, 65, 75] * 3, dtype=float)
    table = predictions_table(np.eye(81)[np.clip(ages.astype(int) + np.tile([0, 3, 9], 8), 0, 80)], ages)
    fig = error_figures(table, "hand-made")
    panel = fig.axes[2]
    fig.canvas.draw()
    box = panel.get_window_extent()
    assert panel.texts and all(t.get_window_extent().y1 <= box.y1 for t in panel.texts)
