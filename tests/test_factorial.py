"""Chapter 04's factorial: cell names, the contrasts against hand computation, the linear model
recovering known effects, verdicts, the bootstrap, and the store a study resumes from."""
import json

import numpy as np
import pandas as pd
import pytest

from fadenet.config import load_config
from fadenet.evaluation import factorial
from fadenet.resolve import resolve


def _runs(truth: dict, seeds=(42, 1337), noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Runs whose test MAE is 5 + the effects in ``truth`` (coded -1/2, +1/2) + seed block + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s_index, s in enumerate(seeds):
        for cell in factorial.cells():
            x = {i: 0.5 if on else -0.5 for i, on in cell.items()}
            mae = 5.0 + 0.03 * s_index + rng.normal(0, noise)
            for term, value in truth.items():
                mae += value * np.prod([x[i] for i in term.split(":")])
            rows.append({**cell, "seed": s, "val_mae": mae + 0.1, "test_mae": mae, "run": f"r{s}-{len(rows)}"})
    return pd.DataFrame(rows)


def test_cells_and_names():
    cells = factorial.cells()
    assert len(cells) == 16 and len({tuple(c.values()) for c in cells}) == 16
    assert factorial.cell_name(cells[0]) == "baseline"
    assert factorial.cell_name(cells[-1]) == "FADE-Net"
    assert factorial.cell_name({"ca": True, "msff": True, "spp": False, "dldl_v2": True}) == "FADE-Net without SPP"
    assert (factorial.cell_name({"ca": True, "msff": False, "spp": True, "dldl_v2": False})
            == "baseline + coordinate attention + SPP")
    assert factorial.term_name("ca:spp") == "coordinate attention x SPP"


def test_cell_config_sets_every_switch_and_the_budget():
    cfg = load_config("smoke")
    run_cfg = factorial.cell_config(cfg, {"ca": True, "msff": False, "spp": True, "dldl_v2": False}, 7)
    assert (run_cfg.model.ca, run_cfg.model.msff, run_cfg.model.spp, run_cfg.loss.dldl_v2) == (True, False, True, False)
    assert run_cfg.train.seed == 7 and run_cfg.train.fraction == cfg.eval.ablation_budget
    # a copy: the profile's config keeps its own switches and seed for the next cell
    assert (cfg.model.ca, cfg.model.msff, cfg.model.spp, cfg.train.seed) == (True, True, True, 42)


def test_contrasts_are_differences_of_cell_means():
    on = np.array([list(c.values()) for c in factorial.cells()], dtype=bool)
    y = np.arange(16, dtype=float) ** 1.5
    effect = factorial.contrasts(on) @ y
    ca, spp = on[:, 0], on[:, 2]
    assert effect[0] == pytest.approx(y[ca].mean() - y[~ca].mean())
    k = factorial.TERMS.index("ca:spp")
    by_hand = ((y[ca & spp].mean() - y[~ca & spp].mean()) - (y[ca & ~spp].mean() - y[~ca & ~spp].mean()))
    assert effect[k] == pytest.approx(by_hand)


def test_linear_model_recovers_known_effects_and_verdicts():
    truth = {"ca": -0.30, "spp": 0.25, "ca:spp": 0.2}
    table = factorial.effects(_runs(truth, noise=0.01)).set_index("term")
    for term in factorial.TERMS:
        assert table.loc[term, "effect"] == pytest.approx(truth.get(term, 0.0), abs=0.02)
        # noise sd 0.01 over 32 runs: half-width t(0.975, 20 df) * 0.01 / sqrt(8) = 0.0074 expected
        assert 0.003 < (table.loc[term, "ci_high"] - table.loc[term, "ci_low"]) / 2 < 0.015
    assert table.loc["ca", "verdict"].startswith("lowers MAE by 0.3")
    assert table.loc["spp", "verdict"].startswith("raises MAE by 0.2")
    assert table.loc["msff", "verdict"].startswith("equivalent to no effect within 0.1 years")
    assert "less than" not in table.loc["ca", "verdict"]
    # the OLS estimate equals the bootstrap's point contrast in a balanced design
    runs = _runs(truth, noise=0.05, seed=5)
    on = runs[list(factorial.IDEAS)].to_numpy(dtype=bool)
    exact = factorial.effects(runs, level=0.95)
    assert np.allclose(exact["effect"], factorial.contrasts(on) @ runs["test_mae"].to_numpy())


def test_detected_but_negligible_effect_says_both():
    table = factorial.effects(_runs({"spp": 0.03}, noise=0.005)).set_index("term")
    assert table.loc["spp", "verdict"].startswith("raises MAE by 0.03 years, less than 0.1")


def test_noisy_small_effect_is_undecided():
    table = factorial.effects(_runs({"msff": -0.08}, noise=0.15, seed=3)).set_index("term")
    assert table.loc["msff", "verdict"].startswith("undecided")


def test_incomplete_factorial_is_refused():
    with pytest.raises(ValueError, match="incomplete"):
        factorial.effects(_runs({}).iloc[:-1])


def test_hierarchical_bootstrap_covers_a_known_per_face_gap():
    runs = _runs({}, noise=0.0)
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(0, 5, 400))
    errors = np.stack([base + (0.5 if r["ca"] else 0.0) + rng.normal(0, 0.3, 400) for _, r in runs.iterrows()])
    boot = factorial.hierarchical_bootstrap(runs, errors, resamples=400)
    ca = factorial.TERMS.index("ca")
    assert boot[ca, 0] < 0.5 < boot[ca, 1] and boot[ca, 1] - boot[ca, 0] < 0.2
    spp = factorial.TERMS.index("spp")
    assert boot[spp, 0] < 0 < boot[spp, 1]


def test_one_at_a_time_rows_are_read_off_the_cells():
    runs = _runs({"ca": -0.3})
    rows = factorial.one_at_a_time(runs).set_index("network")
    assert len(rows) == 10
    base, plus_ca = rows.loc["baseline", "test MAE mean"], rows.loc["baseline + coordinate attention", "test MAE mean"]
    assert plus_ca - base == pytest.approx(-0.3)


def test_store_is_read_back_without_training(tmp_path, monkeypatch):
    cfg = load_config("smoke", f"figures_dir={tmp_path}", f"runs_dir={tmp_path / 'runs'}")
    run_cfg = factorial.cell_config(cfg, factorial.cells()[0], 42)
    run_id = resolve(run_cfg).run_folder.name
    store = tmp_path / "predictions"
    store.mkdir()
    row = {"ca": False, "seed": 42, "test_mae": 4.2, "run": run_id}
    (store / f"{run_id}.json").write_text(json.dumps(row))
    pd.DataFrame({"face": ["a.jpg"], "true_age": [30], "predicted_age": [31.0], "std": [2.0]}).to_csv(
        store / f"{run_id}.csv.gz", index=False, compression="gzip")
    monkeypatch.setattr(factorial, "train", lambda *a, **k: pytest.fail("a stored run was trained again"))
    assert factorial.stored_or_trained(run_cfg, None, None, store, {}) == row
    assert factorial.face_errors(pd.DataFrame([row]), store).tolist() == [[1.0]]


def test_transfer_table_pairs_seeds_and_computes_the_t_interval_by_hand():
    from scipy import stats
    rows = []
    gaps = {1: [-0.30, -0.20, -0.25], 3: [0.01, -0.01, 0.00]}
    for scale, d in gaps.items():
        for seed, gap in zip((42, 1337, 7), d):
            base = 5.0 + 0.1 * seed % 3
            rows += [{"network": "baseline", "scale": scale, "seed": seed, "test_mae": base, "epoch_equivalents": 4.0 * scale},
                     {"network": "FADE-Net", "scale": scale, "seed": seed, "test_mae": base + gap,
                      "epoch_equivalents": 4.0 * scale}]
    table = factorial.transfer_table(pd.DataFrame(rows)).set_index("epoch_equivalents")
    d = np.array(gaps[1])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert table.loc[4.0, "fadenet_minus_baseline"] == pytest.approx(-0.25)
    assert (table.loc[4.0, "ci_low"], table.loc[4.0, "ci_high"]) == pytest.approx((-0.25 - half, -0.25 + half))
    assert table.loc[4.0, "verdict"].startswith("lowers MAE by 0.25")
    assert table.loc[12.0, "verdict"].startswith("equivalent to no effect within 0.1")
    summary = factorial.chapter_summary(factorial.effects(_runs({"ca": -0.3}, noise=0.01)),
                                        factorial.one_at_a_time(_runs({"ca": -0.3}, noise=0.01)), table.reset_index())
    assert "the verdict changes with the budget" in summary
    assert "Coordinate attention: lowers MAE by 0.3" in summary


def test_transfer_runs_stretch_each_budget_from_the_profiles_epochs(monkeypatch):
    cfg = load_config("smoke", "train.epochs=2", "eval.transfer_seeds=[42,1337,7]", "eval.transfer_scales=[1,3]")
    seen = []
    monkeypatch.setattr(factorial, "stored_or_trained", lambda run_cfg, faces, split, store, labels, progress: seen.append(
        (labels["network"], labels["scale"], run_cfg.train.seed, run_cfg.train.epochs)) or {})
    factorial.run_transfer(cfg, None, None, progress=False)
    # every job's epochs are the profile's times its scale: nothing compounds from job to job
    assert seen == [(net, scale, seed, 2 * scale) for scale in (1, 3) for seed in (42, 1337, 7)
                    for net in ("baseline", "FADE-Net")]
    assert cfg.train.epochs == 2 and cfg.train.seed == 42
