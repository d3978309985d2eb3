"""Tables and the figure of the speed chapter (notebook 07): the speed table by back-end, the
speed targets, the READMEs' speed claims next to what is measured here, and speed against size
and accuracy."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..config import Config
from ..evaluation.factorial import IDEAS, cell_name
from ..figures import save_table
from ..model.backbones import backbone
from ..variants import ABLATION, LEAVE_ONE_OUT, OTHER, SWITCHES, VANILLA, names, variant
from .int8 import Int8Study
from .speed import BACKENDS, CUDA_BACKENDS, PARALLEL_SPP, same_network

EAGER, ORT_FP32, ORT_INT8 = BACKENDS["eager"], BACKENDS["ort_fp32"], BACKENDS["ort_int8"]
SHORT = {"PyTorch eager": "eager", "PyTorch channels-last": "channels-last", BACKENDS["compile"]: "compile",
         ORT_FP32: "ORT FP32", ORT_INT8: "ORT INT8", **{v: v for v in CUDA_BACKENDS.values()}}


def throughput_table(table: pd.DataFrame) -> pd.DataFrame:
    """Images/s of every network (rows) on every back-end and batch size (columns), "n/a" where a
    back-end could not run, with parameters and multiply-adds: the table README shows."""
    cost = [c for c in table.columns if c.startswith("M multiply-adds")]
    wide = table.pivot_table(index="model", columns=["batch", "backend"], values="images/s", sort=False,
                             dropna=False)
    wide.columns = [f"{SHORT.get(backend, backend)} @{batch}" for batch, backend in wide.columns]
    wide = wide.map(lambda v: "n/a" if pd.isna(v) else f"{v:.1f}")
    sizes = table.drop_duplicates("model").set_index("model")[["parameters", *cost]]
    return sizes.join(wide).reset_index()


def save_speed_tables(table: pd.DataFrame, name: str, cfg: Config, caption: str) -> Path:
    """``<name>.csv/.md`` (images/s by network and back-end) and ``<name>_latency.csv/.md``
    (every row with its latencies, timed calls, set-up time and n/a reasons)."""
    save_table(table.round(3), f"{name}_latency", cfg, caption)
    return save_table(throughput_table(table), name, cfg, f"images/s = batch / median latency; {caption}")


def best_backend(table: pd.DataFrame, model: str, batch: int = 1) -> pd.Series | None:
    """The row of the fastest back-end of ``model`` at ``batch`` (None when none was timed)."""
    rows = table[(table["model"] == model) & (table["batch"] == batch) & table["images/s"].notna()]
    return rows.loc[rows["images/s"].idxmax()] if len(rows) else None


def _rate(table: pd.DataFrame, model: str, backend: str, batch: int = 1) -> float:
    rows = table[(table["model"] == model) & (table["backend"] == backend) & (table["batch"] == batch)]
    return float(rows["images/s"].iloc[0]) if len(rows) else float("nan")


def targets(table: pd.DataFrame, study: Int8Study | None = None) -> pd.DataFrame:
    """The speed and INT8 targets at batch 1, each with what was measured and whether it is reached
    (None where this run did not measure it). Both INT8 targets come from ``study`` when given,
    so that its speed and its MAE are of the same (trained) network; else speed from ``table``."""
    best = best_backend(table, "fadenet")
    vanilla = _rate(table, VANILLA, EAGER)
    speedup = best["images/s"] / vanilla if best is not None else float("nan")
    rows = [("FADE-Net's fastest back-end / vanilla MobileNetV3-Large in PyTorch eager", "at least 2.0", speedup,
             speedup >= 2.0, f"{best['backend']}: {best['images/s']:.1f} vs {vanilla:.1f} images/s"
             if best is not None and np.isfinite(vanilla) else "not both measured")]
    if study is None:
        int8, fp32 = _rate(table, "fadenet", ORT_INT8), _rate(table, "fadenet", ORT_FP32)
        rows.append(("FADE-Net ONNX Runtime INT8 / FP32 (random weights)", "at least 1.3", int8 / fp32,
                     int8 / fp32 >= 1.3, f"{int8:.1f} vs {fp32:.1f} images/s" if np.isfinite(int8 / fp32)
                     else "not both measured"))
    else:
        t = study.table
        speed = next(c for c in t.columns if c.startswith("images/s"))
        default = t[t["engine"].str.endswith("(default)")].iloc[0]
        fp32 = t[t["engine"] == ORT_FP32].iloc[0]
        ratio = default[speed] / fp32[speed]
        rows += [("ONNX Runtime INT8 / FP32 (trained checkpoint)", "at least 1.3", ratio, ratio >= 1.3,
                  f"{default[speed]:.1f} vs {fp32[speed]:.1f} images/s"),
                 ("INT8 test MAE - FP32 test MAE (trained checkpoint)", "at most 0.1", default["MAE - FP32 MAE"],
                  abs(default["MAE - FP32 MAE"]) <= 0.1, default["engine"])]
    out = pd.DataFrame(rows, columns=["target", "wanted", "measured", "reached", "detail"])
    out["reached"] = [None if not np.isfinite(m) else bool(r) for m, r in zip(out["measured"], out["reached"])]
    out["measured"] = out["measured"].round(3)
    return out


def spp_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """FADE-Net with cascaded (default) against parallel SPP pools, on every back-end and batch."""
    rows = []
    for (backend, batch), group in table[table["model"].isin(["fadenet", PARALLEL_SPP])].groupby(
            ["backend", "batch"], sort=False):
        fast, parallel = _rate(group, "fadenet", backend, batch), _rate(group, PARALLEL_SPP, backend, batch)
        rows.append({"backend": backend, "batch": batch, "cascaded images/s": round(fast, 1),
                     "parallel images/s": round(parallel, 1), "cascaded / parallel": round(fast / parallel, 3)})
    return pd.DataFrame(rows)


def speed_claims(table: pd.DataFrame, hardware: str) -> pd.DataFrame:
    """The FADE-Net and HAL-Net READMEs' speed claims ("reported", with their hardware) next to FADE-Net's batch-1
    throughput measured here (with this machine's)."""
    eager = _rate(table, "fadenet", EAGER)
    cpu = table[~table["backend"].isin(CUDA_BACKENDS.values())]
    gpu = table[table["backend"].isin(CUDA_BACKENDS.values())]
    best_cpu, best_gpu = best_backend(cpu, "fadenet"), best_backend(gpu, "fadenet")
    measured_cpu = (f"{best_cpu['images/s']:.0f} images/s ({best_cpu['backend']}); "
                    f"{eager:.0f} in PyTorch eager" if best_cpu is not None else "not measured")
    measured_gpu = (f"{best_gpu['images/s']:.0f} images/s ({best_gpu['backend']})" if best_gpu is not None
                    else "not measured: no GPU here")
    return pd.DataFrame([
        ("speed on CPU, batch 1", "59 FPS", "Ryzen 9 CPU", "HAL-Net README (FADE-Net's says only 'real-time')",
         measured_cpu, hardware),
        ("speed on GPU, batch 1", "122 FPS", "RTX 3060", "HAL-Net README", measured_gpu, hardware),
    ], columns=["claim", "reported", "reported hardware", "reported in", "measured here (FADE-Net)", "hardware here"])


def speed_figure(table: pd.DataFrame, accuracy: pd.DataFrame | None, batch: int = 1) -> plt.Figure:
    """One row per network, named in words with its parameters, the fastest at the top: its
    images/s at ``batch`` (left; the fastest back-end as a bar, PyTorch eager as a dot) and its
    chapter 04 test MAE (right; mean and standard deviation over seeds). ``accuracy`` has one row
    per network of chapter 04 (its name in words, its four switches, "test MAE mean" and "test
    MAE std"); None before chapter 04 has run."""
    fastest = [best_backend(table, name, batch) for name in dict.fromkeys(table["model"])]
    best = pd.DataFrame([row for row in fastest if row is not None]).sort_values("images/s").reset_index(drop=True)
    eager = table[(table["backend"] == EAGER) & (table["batch"] == batch)].set_index("model")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.6), sharey=True, width_ratios=(1.2, 1))
    y = np.arange(len(best))
    left.barh(y, best["images/s"], color="tab:blue", label="fastest back-end")
    rates = [eager.loc[m, "images/s"] if m in eager.index else np.nan for m in best["model"]]
    left.scatter(rates, y, facecolor="white", edgecolor="0.2", zorder=3, label="PyTorch eager")
    left.set_yticks(y, [f"{reader_name(m)} ({p / 1e6:.1f} M)" for m, p in zip(best["model"], best["parameters"])],
                    fontsize=8)
    left.set(xlabel=f"images/s (batch {batch})", title="speed (parameters in millions)")
    left.legend(fontsize=8, loc="lower right")
    _mae_panel(right, best, accuracy)
    fig.tight_layout()
    return fig


def _mae_panel(ax: plt.Axes, best: pd.DataFrame, accuracy: pd.DataFrame | None) -> None:
    ax.set(title="accuracy (mean ± SD over seeds)", xlabel="test MAE (years), chapter 04")
    if accuracy is None or accuracy.empty:
        ax.text(0.5, 0.5, "no test MAE yet:\nchapter 04 has stored no runs\n(run notebook 04)",
                ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")
        return
    row_of = {model: i for i, model in enumerate(best["model"])}
    aliases = same_network()
    for _, row in accuracy.iterrows():
        name = timed_variant(row)
        timed = aliases.get(name, name)
        if timed not in row_of:
            continue
        # the loss does not change the network: a row holds it trained with either loss
        v2 = bool(row["dldl_v2"])
        ax.errorbar(row["test MAE mean"], row_of[timed], xerr=np.nan_to_num(row.get("test MAE std", 0.0)), fmt="o",
                    color="tab:blue", mfc="tab:blue" if v2 else "white", capsize=3,
                    label="trained with the DLDL-v2 loss" if v2 else "trained with plain DLDL")
    if not ax.containers:
        ax.text(0.5, 0.5, "no network of chapter 04 was timed here", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        return
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    ax.legend(handles.values(), handles.keys(), fontsize=8, loc="lower right")


def reader_name(model: str) -> str:
    """A timed network as a reader names it: "FADE-Net without SPP", "MobileNetV2 baseline"."""
    if model in names(ABLATION, LEAVE_ONE_OUT):
        settings = variant(model).settings
        return cell_name({idea: settings[key] for idea, (key, _) in IDEAS.items()})
    if model in names(OTHER):
        return f"{backbone(model).title} baseline"
    if model == VANILLA:
        return f"{backbone('mobilenet_v3_large').title} classifier (torchvision)"
    if model == PARALLEL_SPP:
        return "FADE-Net (parallel SPP)"
    return model


def timed_variant(row: pd.Series) -> str | None:
    """The name the speed table times a chapter 04 network under: the variant whose switches are
    the row's (columns named by each switch's last part: ca, msff, spp, dldl_v2)."""
    for name in names(ABLATION, LEAVE_ONE_OUT):
        settings = variant(name).settings
        if all(bool(row[key.rsplit(".", 1)[-1]]) == settings[key] for key in SWITCHES):
            return name
    return None


def chapter_summary(table: pd.DataFrame, goals: pd.DataFrame, batch: int = 1) -> str:
    """What chapter 07 found, computed from its tables: FADE-Net's batch-``batch`` speed in eager
    PyTorch and on its fastest back-end, and each target reached, missed or not measured."""
    best = best_backend(table, "fadenet", batch)
    eager = _rate(table, "fadenet", EAGER, batch)
    lines = [f"- FADE-Net runs {eager:.1f} images/s at batch {batch} in PyTorch eager"
             + (f" and {best['images/s']:.1f} on its fastest back-end, {best['backend']} "
                f"({best['images/s'] / eager:.2f}x)." if best is not None else ".")]
    for goal in goals.to_dict("records"):
        state = ("not measured" if goal["reached"] is None else
                 f"{'reached' if goal['reached'] else 'missed'}: {goal['measured']:.3g} ({goal['detail']})")
        lines.append(f"- {goal['target']}, {goal['wanted']}: {state}.")
    return "\n".join(lines)
