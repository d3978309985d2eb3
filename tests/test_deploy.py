"""Deployment (chapter 07): ONNX export checked against PyTorch on real faces, INT8 quantisation,
and the structure of the speed benchmark's tables. No test here asserts a speed."""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fadenet.cli import build_parser, main
from fadenet.config import ConfigError, load_config
from fadenet.data import load_split, prepare
from fadenet.deploy import (BACKENDS, PARALLEL_SPP, bench_models, export_checkpoint, op_profile, speed_table,
                            spp_pooling_speed)
from fadenet.deploy.export import PARITY_TOLERANCE, face_batch, ort_session
from fadenet.deploy.report import spp_comparison, targets, throughput_table
from fadenet.model import expected_age, predict_probs
from fadenet.model import predict
from fadenet.variants import VANILLA
from fadenet.training import CheckpointError, load_model, train

pytestmark = [pytest.mark.aaf, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def cfg(aaf_subset_root, tmp_path_factory):
    """The smoke profile on ~240 real AAF faces, everything it writes in a temporary folder."""
    folder = tmp_path_factory.mktemp("deploy")
    return load_config("smoke", "data.source=aaf", f"data.root={aaf_subset_root}", f"data.cache_dir={folder}/cache",
                       f"runs_dir={folder}/runs", f"figures_dir={folder}/figures", "bench.threads=1")


@pytest.fixture(scope="module")
def faces(cfg):
    faces = prepare(cfg, progress=False)
    return faces, load_split(faces, cfg)


@pytest.fixture(scope="module")
def checkpoint(cfg, faces):
    """A smoke-trained FADE-Net (one epoch) whose outputs are made to depend on the face: one
    epoch leaves the batch-norm statistics at their start and the distributions flat (and any
    export matches a flat distribution), so the statistics are taken from 64 real training faces
    and the last layer drawn with unit variance. Saved as a checkpoint in its own folder."""
    faces, split = faces
    model, _, state = load_model(train(cfg, progress=False).best)
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.from_numpy(face_batch(faces, split.train[:64])))
        last = model.eval().head[-1].weight
        last.copy_(torch.randn(last.shape, generator=torch.Generator().manual_seed(0)))
    state["model"] = model.state_dict()
    path = Path(cfg.runs_dir) / "sharp" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint):
    return export_checkpoint(checkpoint, int8=True, threads=1, progress=False)


def onnx_probabilities(path, x: np.ndarray) -> np.ndarray:
    (logits,) = ort_session(path, threads=1).run(None, {"image": x})
    return predict(torch.from_numpy(logits))[0].numpy()


# ---- export --------------------------------------------------------------------------------
def test_fp32_export_gives_pytorchs_probabilities_on_real_faces(checkpoint, exported, faces):
    faces, split = faces
    model, _, _ = load_model(checkpoint)
    rows = split.test
    reference = predict_probs(model, faces.images, rows)
    assert reference.max(1).mean() > 0.1 and expected_age(reference).std() > 1  # see the fixture
    difference = np.abs(onnx_probabilities(exported.onnx, face_batch(faces, rows)) - reference).max()
    assert difference <= PARITY_TOLERANCE
    assert exported.max_prob_difference <= PARITY_TOLERANCE and exported.parity_faces == min(32, len(rows))


@pytest.mark.parametrize("batch,size", [(1, 64), (5, 64), (5, 96)])
def test_one_export_serves_any_batch_and_input_size(checkpoint, exported, faces, batch, size):
    faces, split = faces
    model, _, _ = load_model(checkpoint)
    x = face_batch(faces, split.test[:batch], size)
    with torch.no_grad():
        expected = predict(model(torch.from_numpy(x)))[0].numpy()
    probs = onnx_probabilities(exported.onnx, x)
    assert probs.shape == (batch, 81)
    np.testing.assert_allclose(probs, expected, atol=PARITY_TOLERANCE)


def test_exports_are_written_beside_the_checkpoint_and_nothing_else(checkpoint, exported):
    folder = checkpoint.parent
    assert exported.onnx == folder / "model.onnx" and exported.int8 == folder / "model.int8.onnx"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_int8_model_runs_and_stays_close_to_fp32(exported, faces):
    faces, split = faces
    x = face_batch(faces, split.test)
    (fp32,), (int8,) = (ort_session(path, threads=1).run(None, {"image": x}) for path in (exported.onnx, exported.int8))
    assert int8.shape == fp32.shape == (len(x), 81) and np.isfinite(int8).all()
    # A loose bound: the fixture's unit-variance last layer multiplies quantisation error many
    # times, so a tight one would test the fixture rather than the quantiser (notebook 07
    # compares the test MAE of a trained network)
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.8
    assert exported.int8.stat().st_size < 0.5 * exported.onnx.stat().st_size  # 8-bit weights
    assert set(exported.mae) == {"PyTorch FP32", "ONNX Runtime FP32", "ONNX Runtime INT8"}
    assert exported.mae["PyTorch FP32"] == pytest.approx(exported.mae["ONNX Runtime FP32"], abs=1e-3)
    assert all(math.isfinite(v) for v in exported.mae.values()) and exported.test_faces == len(split.test)


def test_op_profile_says_where_the_time_goes(exported, faces):
    faces, split = faces
    profile = op_profile({"FP32": exported.onnx, "INT8": exported.int8}, face_batch(faces, split.test[:1]),
                         threads=1, runs=2)
    ops = profile.operators
    assert list(ops.columns) == ["FP32 ms/call", "INT8 ms/call"]
    assert ops.index[-1] == "total" and (ops.loc["total"] > 0).all()
    assert ops.loc["QLinearConv", "INT8 ms/call"] > 0 and ops.loc["QLinearConv", "FP32 ms/call"] == 0
    nodes = profile.nodes
    assert list(nodes["graph"].unique()) == ["FP32", "INT8"] and (nodes.groupby("graph").size() <= 8).all()
    # SPP's projection of the 64px smoke input: 4 x 960 channels of a 2x2 map to 512
    spp = nodes[(nodes["graph"] == "FP32") & (nodes["shapes"] == "3840x2x2 -> 512x2x2")]
    assert len(spp) == 1 and spp["operator"].iloc[0] == "Conv" and 0 < spp["share of the call"].iloc[0] < 1


@pytest.mark.parametrize("content", [None, b"not a checkpoint at all"])
def test_a_missing_or_foreign_checkpoint_is_one_clear_error(tmp_path, capsys, content):
    path = tmp_path / "best.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        export_checkpoint(path)
    assert main(["export", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(path) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "model.onnx").exists()


# ---- speed benchmark -----------------------------------------------------------------------
def test_speed_table_has_a_row_per_network_backend_and_batch(cfg, faces):
    cfg = copy.deepcopy(cfg).override({"bench.repeats": 1, "bench.seconds": 0.0,
                                            "bench.compile_seconds": 0.0})
    table = speed_table(cfg, *faces, models="mobilenet_v3_small", batches=(1, 2), size=64, threads=1,
                        progress=False)
    assert list(table.columns[:5]) == ["model", "backend", "batch", "size", "threads"]
    assert {"p50 ms", "p90 ms", "images/s", "timed calls", "setup s", "note", "parameters",
            "M multiply-adds @64px"} <= set(table.columns)
    assert len(table) == len(BACKENDS) * 2 and set(table["backend"]) == set(BACKENDS.values())
    compiled = table[table["backend"] == BACKENDS["compile"]]
    assert compiled["images/s"].isna().all() and compiled["note"].str.startswith("n/a (not tried").all()
    timed = table[table["backend"] != BACKENDS["compile"]]
    assert (timed["timed calls"] >= 1).all() and (timed["images/s"] > 0).all() and (timed["note"] == "").all()

    wide = throughput_table(table)
    assert len(wide) == 1 and "ORT INT8 @2" in wide.columns and wide["compile @1"].iloc[0] == "n/a"
    measured = targets(table)
    assert len(measured) == 2 and measured["reached"].isna().all()  # neither FADE-Net nor vanilla was timed
    assert spp_comparison(table).empty


def test_spp_pooling_table_compares_both_forms_per_batch():
    cfg = load_config("smoke", "bench.repeats=1", "bench.batches=1,3")
    table = spp_pooling_speed(cfg, channels=8, progress=False)
    assert len(table) == 4 and set(table["batch"]) == {1, 3}
    parallel = table[table["SPP pooling"].str.startswith("parallel")]
    assert (parallel["speed-up over parallel"] == 1.0).all() and (table["p50 ms"] > 0).all()


@pytest.mark.parametrize("options,message", [
    ({"models": "fadenet,nonet"}, "nonet"), ({"backends": ["eager", "tpu"]}, "tpu")])
def test_unknown_networks_and_backends_are_config_errors_naming_them(cfg, faces, options, message):
    with pytest.raises(ConfigError, match=message):
        speed_table(cfg, *faces, progress=False, **options)


def test_command_line_takes_the_issues_flags():
    args = build_parser().parse_args(["bench", "speed", "--models", "fadenet", "resnet18", "--batch", "1,32",
                                      "--threads", "2", "--size", "224"])
    assert (args.benchmark, args.models, args.batch, args.threads, args.size) == \
        ("speed", ["fadenet", "resnet18"], (1, 32), 2, 224)
    # each benchmark has its own flags: --batch of the data benchmark is one size, --steps is train's
    assert build_parser().parse_args(["bench", "data", "--batch", "32"]).batch == 32
    for wrong in (["bench", "data", "--steps", "3"], ["bench", "speed", "--steps", "3"], ["bench", "train", "--size", "9"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(wrong)
    args = build_parser().parse_args(["export", "--checkpoint", "x.pt", "--format", "onnx", "--int8"])
    assert args.int8 and args.format == "onnx"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "speed", "--batch", "1,zero"])


def test_each_distinct_network_is_timed_once():
    from fadenet.deploy.speed import same_network
    networks, aliases = bench_models(), same_network()
    assert list(networks)[:3] == ["fadenet", PARALLEL_SPP, VANILLA]
    # a loss is not a network, and FADE-Net with CA, fusion and SPP off is the GAP baseline
    assert aliases == {"+dldl_v2": "baseline", "-dldl_v2": "fadenet"}
    assert not set(aliases) & set(networks)


def test_interleaved_rounds_call_every_contender_once_in_a_new_order_and_stop_on_time():
    from fadenet.harness import interleaved
    log = []
    calls = {k: (lambda k=k: log.append(k) or len(log)) for k in "abcd"}
    results = interleaved(calls, rounds=6)
    assert {k: len(v) for k, v in results.items()} == {k: 6 for k in "abcd"}
    orders = [tuple(log[i:i + 4]) for i in range(0, 24, 4)]
    assert all(sorted(o) == list("abcd") for o in orders) and len(set(orders)) > 1
    assert results["a"] == [i + 1 for i, k in enumerate(log) if k == "a"]  # each result is its own call's
    assert len(interleaved(calls, rounds=10, seconds=0.0, min_rounds=2)["a"]) == 2


def test_round_robin_settles_each_call_before_timing_it():
    from fadenet.deploy.speed import round_robin
    made = {"a": 0, "b": 0}
    calls = {key: (lambda k=key: made.__setitem__(k, made[k] + 1)) for key in made}
    times = round_robin(calls, repeats=4, seconds=1e9, progress=False, settle=0.0, block=0.0)
    assert {k: len(t) for k, t in times.items()} == {"a": 4, "b": 4} and made == {"a": 8, "b": 8}
    slow = {"a": lambda: time.sleep(0.002)}
    times = round_robin(slow, repeats=3, seconds=1e9, progress=False, settle=0.0, block=0.02)
    assert len(times["a"]) >= 3 * 5 and min(times["a"]) >= 0.002


def test_int8_targets_are_of_the_studied_network():
    import pandas as pd
    from fadenet.deploy.int8 import Int8Study
    speed = "images/s (batch 1, 224px)"
    study = Int8Study(pd.DataFrame({"engine": ["PyTorch FP32", "ONNX Runtime FP32", "ONNX Runtime INT8, X (default)"],
                                    speed: [40.0, 80.0, 120.0], "MAE - FP32 MAE": [0.0, 0.0, 0.15]}), profile=None)
    table = pd.DataFrame({"model": ["fadenet", "fadenet"], "backend": [BACKENDS["ort_fp32"], BACKENDS["ort_int8"]],
                          "batch": [1, 1], "images/s": [100.0, 90.0]})
    measured = targets(table, study).set_index("target")
    int8 = measured.loc["ONNX Runtime INT8 / FP32 (trained checkpoint)"]
    assert int8["measured"] == 1.5 and int8["reached"] and int8["detail"] == "120.0 vs 80.0 images/s"
    mae = measured.loc["INT8 test MAE - FP32 test MAE (trained checkpoint)"]
    assert mae["measured"] == 0.15 and mae["reached"] is False
    assert measured.iloc[0]["reached"] is None  # the vanilla classifier was not timed


def test_cpu_features_name_the_8_bit_and_bf16_instructions():
    from fadenet.runtime import cpu_features
    assert cpu_features({"avx2", "fma"}) == "AVX2 yes, AVX-512 no, AVX-512 VNNI no, AVX-VNNI no, AVX-512-BF16 no, AMX no"
    assert cpu_features({"avx2", "avx_vnni", "amx_bf16"}) == (
        "AVX2 yes, AVX-512 no, AVX-512 VNNI no, AVX-VNNI yes, AVX-512-BF16 no, AMX yes")


def test_chapter_04_networks_map_to_the_variant_the_speed_table_times_by_their_switches():
    from fadenet.deploy.report import timed_variant
    row = lambda ca, msff, spp, dldl_v2: pd.Series({"ca": ca, "msff": msff, "spp": spp, "dldl_v2": dldl_v2})
    assert timed_variant(row(False, False, False, False)) == "baseline"
    assert timed_variant(row(False, False, True, False)) == "+spp"
    assert timed_variant(row(True, True, True, True)) == "fadenet"
    assert timed_variant(row(True, False, True, True)) == "-msff"
    assert timed_variant(row(True, True, False, False)) is None  # two ideas on: no variant of its own


def test_timed_networks_are_named_in_words():
    from fadenet.deploy.report import reader_name
    assert [reader_name(m) for m in ("fadenet", "baseline", "+ca", "-spp", "-dldl_v2", "mobilenet_v2", "resnet18",
                                     "fadenet (parallel SPP)", "torchvision mobilenet_v3_large")] == [
        "FADE-Net", "baseline", "baseline + coordinate attention", "FADE-Net without SPP",
        "FADE-Net without the DLDL-v2 loss", "MobileNetV2 baseline", "ResNet-18 baseline", "FADE-Net (parallel SPP)",
        "MobileNetV3-Large classifier (torchvision)"]


def test_speed_figure_puts_each_network_on_its_own_named_row_with_its_chapter04_mae():
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    from fadenet.deploy.report import speed_figure
    from fadenet.deploy.speed import BACKENDS
    table = pd.DataFrame([{"model": m, "backend": BACKENDS[b], "batch": 1, "images/s": r, "parameters": p}
                          for m, p, rates in [("fadenet", 4.8e6, (50, 140)), ("baseline", 4.0e6, (60, 170)),
                                              ("-spp", 3.3e6, (70, 150))]
                          for b, r in zip(("eager", "ort_fp32"), rates)])
    accuracy = pd.DataFrame([{"network": "FADE-Net", "ca": True, "msff": True, "spp": True, "dldl_v2": True,
                              "test MAE mean": 5.0, "test MAE std": 0.1},
                             {"network": "baseline + the DLDL-v2 loss", "ca": False, "msff": False, "spp": False,
                              "dldl_v2": True, "test MAE mean": 5.2, "test MAE std": 0.1}])
    fig = speed_figure(table, accuracy)
    left, right = fig.axes[:2]
    # fastest at the top: rows from the bottom are FADE-Net (140), without SPP (150), baseline (170)
    assert [t.get_text() for t in left.get_yticklabels()] == [
        "FADE-Net (4.8 M)", "FADE-Net without SPP (3.3 M)", "baseline (4.0 M)"]
    # the loss-only variant is the baseline network: it sits on the baseline's row
    points = sorted(tuple(bar.lines[0].get_xydata()[0]) for bar in right.containers)
    assert points == [(5.0, 0.0), (5.2, 2.0)]


def test_chapter07_summary_states_speed_and_each_target_from_the_tables():
    import pandas as pd
    from fadenet.deploy.report import chapter_summary
    table = pd.DataFrame({"model": ["fadenet"] * 3, "backend": [BACKENDS["eager"], BACKENDS["ort_fp32"], BACKENDS["ort_int8"]],
                          "batch": [1, 1, 1], "images/s": [50.0, 100.0, 150.0]})
    goals = pd.DataFrame({"target": ["speed-up", "INT8 MAE"], "wanted": ["at least 2.0", "at most 0.1"],
                          "measured": [1.93, float("nan")], "reached": [False, None], "detail": ["a vs b", ""]})
    assert chapter_summary(table, goals).splitlines() == [
        f"- FADE-Net runs 50.0 images/s at batch 1 in PyTorch eager and 150.0 on its fastest back-end, "
        f"{BACKENDS['ort_int8']} (3.00x).",
        "- speed-up, at least 2.0: missed: 1.93 (a vs b).",
        "- INT8 MAE, at most 0.1: not measured."]
