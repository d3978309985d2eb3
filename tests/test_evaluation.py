"""Evaluation: TTA views, ensembles, metrics, in- and cross-dataset evaluation, the ablation grid."""
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
from fadenet.evaluation.ablation import ablation_config, ablation_table, run_grid
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


def test_ablation_configs_switch_one_idea_and_carry_seed_and_budget(smoke_run):
    _, cfg = smoke_run
    plus_ca = ablation_config(cfg, "+ca", 1337)
    assert (plus_ca.model.ca, plus_ca.model.msff, plus_ca.model.spp, plus_ca.loss.dldl_v2) == (True, False, False, False)
    assert plus_ca.train.seed == 1337 and plus_ca.train.fraction == cfg.eval.ablation_budget
    assert cfg.model.ca and cfg.train.seed == 42, "the profile's config must not change"
    with pytest.raises(KeyError, match=r"no variant '\+magic'"):
        ablation_config(cfg, "+magic", 42)


def test_the_grid_trains_each_run_once_and_reuses_finished_runs(smoke_run, monkeypatch):
    from fadenet.data import load_split, prepare
    _, cfg = smoke_run
    cfg = cfg.override({"eval.ablation_budget": 0.5})
    faces = prepare(cfg, progress=False)
    split = load_split(faces, cfg)
    runs = run_grid(cfg, faces, split, variants=("baseline", "+spp"), progress=False)
    assert list(zip(runs["variant"], runs["seed"])) == [("baseline", 42), ("+spp", 42), ("baseline", 1337), ("+spp", 1337)]
    assert runs["run"].is_unique and (runs["trained on"] == round(len(split.train) / 2)).all()
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a finished ablation run was trained again"))
    again = run_grid(cfg, faces, split, variants=("baseline", "+spp"), progress=False)
    pd.testing.assert_frame_equal(again, runs)
    table = ablation_table(runs, cfg, size=64).set_index("variant")
    assert table.loc["+spp", "parameters"] > table.loc["baseline", "parameters"]
    assert table.loc["baseline", "test MAE mean"] == pytest.approx(
        runs.loc[runs["variant"] == "baseline", "test MAE"].mean())
    assert (table["seeds"] == 2).all() and table["test MAE std"].notna().all()


def test_variant_networks_are_built_on_the_backbone_training_resolves(monkeypatch):
    import fadenet.resolve as resolve_module
    monkeypatch.setattr(resolve_module, "resolve_backbone", lambda cfg: "mobilenet_v2")
    net = ablation.variant_network(load_config("smoke", "model.backbone=auto"), "+spp")
    assert net.meta["backbone"] == "mobilenet_v2" and net.spp is not None and net.fusion is None


def test_learnt_compares_each_variant_with_the_median_predictor_and_its_spread():
    table = pd.DataFrame({"variant": ["baseline", "fadenet", "+spp"], "test MAE mean": [13.3, 7.0, 13.2],
                          "test MAE std": [0.05, 0.1, np.nan]})
    assert ablation.learnt(table, floor=13.25) == [
        "baseline: test MAE 13.30 ± 0.05; did not beat the median-age predictor (13.25).",
        "fadenet: test MAE 7.00 ± 0.10; learnt (13.25).",
        "+spp: test MAE 13.20 (1 seed); did not beat the median-age predictor (13.25)."]


def test_t_interval_matches_a_hand_computation():
    # mean -0.2, sd 0.1, n 3: half width t(0.975, 2) * 0.1 / sqrt(3) = 4.302653 * 0.057735 = 0.248414
    low, high = ablation.t_interval(np.array([-0.3, -0.1, -0.2]))
    assert (low, high) == pytest.approx((-0.448414, 0.048414), abs=1e-6)
    assert np.isnan(ablation.t_interval(np.array([-0.3]))[0])


def test_bootstrap_interval_is_paired_by_face_and_matches_normal_theory():
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 5, 4000)
    # the same faces, one model 0.5 years better on every face: no face-to-face noise in the gap
    assert ablation.bootstrap_interval([(truth * 0.9, truth * 0.9 + 0.5 * np.sign(truth))]) == pytest.approx((-0.5, -0.5))
    # a gap that is N(-0.3, 1) per face: the interval is -0.3 +- 1.96 / sqrt(4000) = +-0.031
    a = np.abs(rng.normal(3, 1, 4000))
    b = a + rng.normal(0.3, 1, 4000)
    low, high = ablation.bootstrap_interval([(a, b)], resamples=4000)
    gap = (a - b).mean()
    assert (high - low) / 2 == pytest.approx(1.96 * (a - b).std() / np.sqrt(4000), rel=0.15)
    assert low < gap < high
    with pytest.raises(ValueError, match="same test faces"):
        ablation.bootstrap_interval([(a, b[:-1])])


def test_paired_effects_pair_seeds_orient_leave_one_out_and_word_the_finding(tmp_path):
    rng = np.random.default_rng(0)
    ages = rng.integers(0, 80, 300)
    rows = []

    def run(name, seed, mae, noise):
        folder = tmp_path / f"{name}-{seed}"
        folder.mkdir()
        predicted = ages + noise
        pd.DataFrame({"row": np.arange(300), "age": ages, "predicted": predicted}).to_csv(
            folder / "test_predictions.csv", index=False)
        rows.append({"variant": name, "seed": seed, "test MAE": mae, "checkpoint": str(folder / "best.pt")})

    for seed, (base, ca, fade, no_ca) in zip((1, 2, 3), [(6.0, 5.7, 5.0, 5.3), (6.1, 5.85, 5.1, 5.35),
                                                         (5.9, 5.55, 4.9, 5.25)]):
        for name, mae in [("baseline", base), ("+ca", ca), ("fadenet", fade), ("-ca", no_ca)]:
            run(name, seed, mae, rng.normal(0, mae, 300))
    run("+spp", 1, 5.9, rng.normal(0, 5.9, 300))  # one seed only: its interval is the bootstrap's
    effects = ablation.paired_effects(pd.DataFrame(rows), resamples=500).set_index("with")
    ca = effects.loc["+ca"]
    # +ca - baseline per seed: -0.3, -0.25, -0.35: mean -0.3, sd 0.05, half width 4.302653 * 0.05 / sqrt(3)
    assert (ca["without"], ca["seeds"], ca["effect (years)"]) == ("baseline", 3, pytest.approx(-0.3))
    assert (ca["t low"], ca["t high"]) == pytest.approx((-0.3 - 0.124207, -0.3 + 0.124207), abs=1e-5)
    assert ca["finding"] == ("ca (the baseline with it against without) lowers MAE by 0.30 years "
                             "(95% CI over 3 seeds: -0.42 to -0.18)")
    # leave one out: the idea's effect is FADE-Net - (FADE-Net without it) = -0.3 on every seed
    no_ca = effects.loc[effects["without"] == "-ca"].iloc[0]
    assert (no_ca.name, no_ca["effect (years)"], no_ca["idea"]) == ("fadenet", pytest.approx(-0.3),
                                                                    "ca (FADE-Net with it against without)")
    spp = effects.loc["+spp"]
    assert spp["seeds"] == 1 and np.isnan(spp["t low"]) and spp["bootstrap low"] < spp["bootstrap high"]
    assert "95% bootstrap CI over test faces, 1 seed" in spp["finding"]
    all_four = effects.loc[effects["without"] == "baseline"].loc["fadenet"]
    assert all_four["effect (years)"] == pytest.approx(-1.0)
    summary = ablation.effects_summary(effects.reset_index()).set_index("idea")
    assert summary.loc[ca["idea"], ["95% low", "interval"]].tolist() == [pytest.approx(ca["t low"]), "t over seeds"]
    assert summary.loc[spp["idea"], ["95% high", "interval"]].tolist() == [spp["bootstrap high"],
                                                                          "bootstrap over test faces"]


def test_effect_sentences_say_when_nothing_is_detectable():
    row = {"idea": "spp (the baseline with it against without)", "seeds": 3, "effect (years)": -0.05, "t low": -0.2, "t high": 0.1,
           "bootstrap low": np.nan, "bootstrap high": np.nan}
    assert ablation.effect_sentence(row) == ("spp (the baseline with it against without): no effect detectable at "
                                             "this budget (-0.05 years, 95% CI over 3 seeds: -0.20 to +0.10)")
    assert ablation.effect_sentence({**row, "effect (years)": 0.3, "t low": 0.1, "t high": 0.5}).startswith(
        "spp (the baseline with it against without) raises MAE by 0.30 years")
