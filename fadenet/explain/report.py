"""Figures and tables of the Grad-CAM chapter (notebook 06): CAM overlays by age group, methods
and layers side by side, the mean CAM per age group, FADE-Net next to its baseline, and the
share of CAM mass on the central face region."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..data.sources import AGE_GROUPS, age_group
from ..model import expected_age, predict_probs
from ..model import AgeNet
from .cam import LAYER_NAMES, METHOD_NAMES, METHODS, cam_layer, compute_cams, face_region, mass_inside, overlay

Cell = tuple[np.ndarray, str] | None  # (uint8 RGB image, title); None leaves the cell empty


def pick_faces(ages: np.ndarray, rows: np.ndarray, per_group: int, seed: int = 42) -> pd.DataFrame:
    """Up to ``per_group`` random faces of each age group among ``rows`` (fixed by ``seed``):
    columns row, age, group, youngest first."""
    rows = np.asarray(rows)
    groups = age_group(ages[rows]).astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    picked = [rng.choice(rows[groups == g], min(per_group, int((groups == g).sum())), replace=False)
              for g in AGE_GROUPS if (groups == g).any()]
    chosen = np.concatenate(picked) if picked else np.zeros(0, int)
    table = pd.DataFrame({"row": chosen, "age": ages[chosen]})
    table["group"] = age_group(table["age"]).astype(str).to_numpy()
    return table.sort_values(["age", "row"], kind="stable").reset_index(drop=True)


def with_predictions(table: pd.DataFrame, model: AgeNet, images: np.ndarray) -> pd.DataFrame:
    """``table`` (with a ``row`` column into ``images``) plus the model's predicted age (no TTA)."""
    probs = predict_probs(model, images, table["row"].to_numpy())
    return table.assign(predicted=expected_age(probs))


def module_path(model: AgeNet, layer: str) -> str:
    """Where the CAM layer ``layer`` sits in the network, e.g. ``backbone.17.conv.2``."""
    target = cam_layer(model, layer)
    return next(name for name, module in model.named_modules() if module is target)


def cam_sets(models: Mapping[str, AgeNet], images: np.ndarray, layers: Mapping[str, Sequence[str]],
             methods: Iterable[str] = tuple(METHODS)) -> dict[tuple[str, str, str], np.ndarray]:
    """CAMs of every (model, layer, method): ``layers[name]`` lists the layers of model ``name``."""
    methods = list(methods)
    return {(name, layer, method): compute_cams(model, images, method, layer)
            for name, model in models.items() for layer in layers[name] for method in methods}


def face_mass_table(sets: Mapping[tuple[str, str, str], np.ndarray], models: Mapping[str, AgeNet]) -> pd.DataFrame:
    """Per (model, layer, method): the mean share of CAM mass inside the central face region
    (:func:`~fadenet.explain.cam.face_region`), its standard error, and how many maps were
    empty (no positive evidence; left out of the mean). ``uniform`` is the region's area
    share: what a map spread evenly over the crop would score."""
    x0, y0, x1, y1 = face_region()
    rows = []
    for (name, layer, method), cams in sets.items():
        share = mass_inside(cams)
        valid = share[~np.isnan(share)]
        rows.append({"model": name, "layer": layer, "module": module_path(models[name], layer),
                     "method": METHOD_NAMES[method], "faces": len(share), "empty maps": len(share) - len(valid),
                     "mass in face region": float(valid.mean()) if len(valid) else float("nan"),
                     "std error": float(valid.std(ddof=1) / np.sqrt(len(valid))) if len(valid) > 1 else float("nan"),
                     "uniform": (x1 - x0) * (y1 - y0)})
    return pd.DataFrame(rows)


def image_grid(cells: Sequence[Sequence[Cell]], row_labels: Sequence[str] = (), cell_inches: float = 1.6,
               title: str = "") -> plt.Figure:
    """A grid of titled images; ``row_labels`` go left of each row."""
    nrows, ncols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches * ncols, cell_inches * nrows + 0.4),
                             squeeze=False)
    for r, row in enumerate(cells):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            cell = row[c] if c < len(row) else None
            if cell is None:
                ax.axis("off")
                continue
            image, text = cell
            ax.imshow(image)
            ax.set_title(text, fontsize=7)
        if r < len(row_labels):
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def age_group_figure(images: np.ndarray, cams: np.ndarray, table: pd.DataFrame, title: str = "") -> plt.Figure:
    """One row per age group: the CAM overlay of each face (``images[i]`` is ``table.iloc[i]``),
    titled true -> predicted age."""
    cells, labels = [], []
    groups = table["group"].to_numpy()
    for group in dict.fromkeys(groups):
        cells.append([(overlay(images[i], cams[i]), f"{table['age'].iloc[i]} -> {table['predicted'].iloc[i]:.1f}")
                      for i in np.flatnonzero(groups == group)])
        labels.append(f"age {group}")
    return image_grid(cells, labels, title=title)


def methods_layers_figure(images: np.ndarray, sets: Mapping[tuple[str, str, str], np.ndarray],
                          model_name: str, table: pd.DataFrame, title: str = "") -> plt.Figure:
    """One row per face (``images[i]`` is ``table.iloc[i]``): the face, then its overlay for
    every (layer, method) of ``model_name``."""
    keys = [key for key in sets if key[0] == model_name]
    cells = [[(images[i], f"age {table['age'].iloc[i]}, pred {table['predicted'].iloc[i]:.1f}")]
             + [(overlay(images[i], sets[key][i]), f"{LAYER_NAMES.get(key[1], key[1])}\n{METHOD_NAMES[key[2]]}")
                for key in keys]
             for i in range(len(table))]
    return image_grid(cells, title=title)


def mean_cam_figure(images: np.ndarray, sets: Mapping[tuple[str, str, str], np.ndarray], groups: np.ndarray,
                    keys: Sequence[tuple[str, str, str]], title: str = "") -> plt.Figure:
    """Columns: age groups; rows: the CAM sets ``keys``. Each cell is the group's mean face under
    its mean CAM (scaled to its own maximum), titled with the number of faces."""
    order = list(dict.fromkeys(groups))
    cells = []
    for key in keys:
        row = []
        for group in order:
            members = groups == group
            mean_face = images[members].mean(axis=0).round().astype(np.uint8)
            mean_cam = sets[key][members].mean(axis=0)
            peak = mean_cam.max()
            row.append((overlay(mean_face, mean_cam / peak if peak > 0 else mean_cam),
                        f"{group} (n={int(members.sum())})"))
        cells.append(row)
    labels = [f"{name}\n{LAYER_NAMES.get(layer, layer)}\n{METHOD_NAMES[method]}" for name, layer, method in keys]
    return image_grid(cells, labels, title=title)


def comparison_figure(images: np.ndarray, cams: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray],
                      ages: np.ndarray, title: str = "") -> plt.Figure:
    """One column per face: the face above each model's CAM overlay, titled with its prediction."""
    cells = [[(image, f"true age {age}") for image, age in zip(images, ages)]]
    cells += [[(overlay(image, cam), f"{p:.1f}") for image, cam, p in zip(images, cams[name], predicted[name])]
              for name in cams]
    return image_grid(cells, ["face", *cams], title=title)


def methods_table() -> pd.DataFrame:
    """The CAM methods offered, what each needs, and its cost per face."""
    return pd.DataFrame([
        {"method": "gradcam", "name": METHOD_NAMES["gradcam"], "uses gradients": True,
         "channel weights": "mean gradient of the predicted age", "cost per face": "1 forward + 1 backward"},
        {"method": "gradcam++", "name": METHOD_NAMES["gradcam++"], "uses gradients": True,
         "channel weights": "positive gradients, higher-order weighting", "cost per face": "1 forward + 1 backward"},
        {"method": "eigencam", "name": METHOD_NAMES["eigencam"], "uses gradients": False,
         "channel weights": "first principal component of the activations", "cost per face": "1 forward + 1 SVD"},
    ])


def chapter_summary(table: pd.DataFrame, method: str = "Grad-CAM", sigmas: float = 2.0) -> str:
    """What chapter 06 found, from :func:`face_mass_table`: for ``method``, the share of each
    map's mass on the face region against a uniform map's, called more or less than uniform
    when the gap exceeds ``sigmas`` standard errors, else "no different from uniform"."""
    lines = []
    for row in table[table["method"] == method].to_dict("records"):
        if not np.isfinite(row["mass in face region"]):
            lines.append(f"- {row['model']}, {row['layer']} layer: all {row['faces']} {method} maps are empty.")
            continue
        gap = row["mass in face region"] - row["uniform"]
        side = ("no different from" if abs(gap) <= sigmas * row["std error"] else
                "more than" if gap > 0 else "less than")
        lines.append(f"- {row['model']}, {row['layer']} layer: {row['mass in face region']:.0%} of the {method} mass "
                     f"lies on the face region (± {row['std error']:.1%}), {side} a uniform map's "
                     f"{row['uniform']:.0%}; {row['empty maps']} of {row['faces']} maps are empty.")
    return "\n".join(lines)
