"""The interactive explorer of notebook 08 (ipywidgets).

Three panels: faces of the dataset (sample index and age-range sliders, TTA and CAM dropdowns;
the face, its CAM overlay, the predicted distribution with its standard deviation and 90%
interval), a photo upload (detect, crop and predict a user's own picture) and a folder box
(batch prediction into a CSV offered for download). Every control is an attribute, so tests
can set values and read what is shown without a browser.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

import cv2
import ipywidgets as widgets
import numpy as np

from ..config import TTA_MODES
from ..data import FaceSet
from ..data.faces import ImageReadError
from ..explain import METHOD_NAMES, compute_cams, overlay
from .batch import annotate, predict_paths
from .predictor import AgePredictor, FacePrediction, read_image, whole_picture
from .report import distribution_png, png

DOWNLOAD_LIMIT = 5_000_000  # CSVs larger than this are offered by path only, not inlined


class ResultView:
    """A face, its CAM overlay, its predicted distribution and a few lines of text."""

    def __init__(self, side: int = 160):
        self.face = widgets.Image(format="png", width=side, height=side)
        self.cam = widgets.Image(format="png", width=side, height=side)
        self.plot = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.pictures = widgets.HBox([self.face, self.cam, self.plot])
        self.box = widgets.VBox([self.pictures, self.text])

    def show(self, crop: np.ndarray, probs: np.ndarray, cam: np.ndarray, lines: Sequence[str],
             true_age: float | None = None) -> None:
        self.face.value = png(crop)
        self.cam.value = png(overlay(crop, cam))
        self.plot.value = distribution_png(probs, true_age)
        self.pictures.layout.display = None
        self.text.value = "<br>".join(lines)

    def message(self, text: str) -> None:
        """Only ``text`` (HTML), no pictures."""
        for image in (self.face, self.cam, self.plot):
            image.value = b""
        self.pictures.layout.display = "none"
        self.text.value = text


def prediction_line(p: FacePrediction, true_age: float | None = None) -> str:
    """The predicted age, and the spread and intervals of the (calibrated) distribution."""
    (low50, high50), (low90, high90) = p.interval(0.5), p.interval(0.9)
    truth = f"true age <b>{true_age:.0f}</b> &middot; " if true_age is not None else ""
    calibrated = ("conformal" if p.conformal else "calibrated" if p.temperature is not None else "uncalibrated")
    return (f"{truth}predicted <b>{p.age:.1f}</b> &middot; std {p.std:.1f} &middot; 50% interval {low50}-{high50} "
            f"&middot; 90% interval {low90}-{high90} ({calibrated})")


class Explorer:
    """The explorer of ``faces[rows]`` (e.g. the test split) and of the user's own pictures."""

    def __init__(self, predictor: AgePredictor, faces: FaceSet, rows: np.ndarray, out_dir: Path,
                 caption: str = ""):
        self.predictor, self.faces, self.out_dir = predictor, faces, Path(out_dir)
        self.rows = np.asarray(rows)
        self.visible = self.rows
        ages = faces.ages[self.rows]
        layers = list(predictor.model.cam_layers())

        self.index = widgets.IntSlider(1, 1, max(1, len(self.rows)), description="face")
        self.age_range = widgets.IntRangeSlider(value=(int(ages.min()), int(ages.max())), min=int(ages.min()),
                                                max=int(ages.max()), description="ages")
        self.tta = widgets.Dropdown(options=list(TTA_MODES), value=predictor.tta, description="TTA")
        self.method = widgets.Dropdown(options=[(METHOD_NAMES[m], m) for m in METHOD_NAMES], description="CAM")
        self.layer = widgets.Dropdown(options=layers, value=layers[0], description="layer")
        self.dataset_view = ResultView()

        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Upload a photo")
        self.whole_image = widgets.Checkbox(False, description="use the whole image if no face is found",
                                            indent=False)
        self.upload_view = ResultView()
        self.upload_view.message("Upload a photo to predict the age of every face in it.")
        self.upload_picture = widgets.Image(format="png", width=480)  # the photo, every face boxed

        self.folder = widgets.Text(placeholder="a folder of images or videos", description="folder")
        self.folder_button = widgets.Button(description="Predict folder", icon="play")
        self.folder_result = widgets.HTML()

        for control in (self.index, self.tta, self.method, self.layer):
            control.observe(self._on_sample, "value")
        for control in (self.tta, self.method, self.layer, self.upload, self.whole_image):
            control.observe(self._on_upload, "value")
        self.age_range.observe(self._on_filter, "value")
        self.folder_button.on_click(self._on_folder)

        self.widget = widgets.VBox([
            widgets.HTML(f"<small>{html.escape(caption)}</small>"),
            _heading("Faces of the dataset"),
            widgets.HBox([self.index, self.age_range]), widgets.HBox([self.tta, self.method, self.layer]),
            self.dataset_view.box,
            _heading("Your own photo"), widgets.HBox([self.upload, self.whole_image]), self.upload_view.box,
            self.upload_picture,
            _heading("A folder (batch prediction to CSV)"), widgets.HBox([self.folder, self.folder_button]),
            self.folder_result,
        ])
        self._on_sample()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- faces of the dataset ---------------------------------------------------------------
    def _on_filter(self, change=None) -> None:
        low, high = self.age_range.value
        ages = self.faces.ages[self.rows]
        self.visible = self.rows[(ages >= low) & (ages <= high)]
        previous = self.index.value
        self.index.max = max(1, len(self.visible))
        self.index.value = 1
        if previous == 1:  # otherwise the index observer has already redrawn
            self._on_sample()

    def _on_sample(self, change=None) -> None:
        if not len(self.visible):
            low, high = self.age_range.value
            self.dataset_view.message(f"No faces aged {low}-{high} here; widen the age range.")
            return
        row = int(self.visible[min(self.index.value, len(self.visible)) - 1])
        crop = np.array(self.faces.images[row])
        true_age = float(self.faces.ages[row])
        probs = self.predictor.with_tta(self.tta.value).predict_crops(crop[None])[0]
        face = FacePrediction(whole_picture(crop), True, crop, probs, self.predictor.temperature,
                              self.predictor.conformal)
        cam = compute_cams(self.predictor.model, crop[None], self.method.value, self.layer.value)[0]
        path = html.escape(str(self.faces.table["path"].iloc[row]))
        self.dataset_view.show(crop, face.calibrated_probs, cam, [
            f"<b>face {self.index.value} of {len(self.visible)}</b> (ages {self.age_range.value[0]}-"
            f"{self.age_range.value[1]}) &middot; <code>{path}</code>",
            prediction_line(face, true_age), self._settings_line()], true_age)

    def _settings_line(self) -> str:
        return (f"TTA {self.tta.value} &middot; CAM: {METHOD_NAMES[self.method.value]} of the predicted age "
                f"at the {self.layer.value} layer")

    # ---- the user's photo -----------------------------------------------------------------------
    def _on_upload(self, change=None) -> None:
        if not self.upload.value:
            return
        item = self.upload.value[0]
        name = html.escape(str(item["name"]))
        try:
            rgb = read_image(io.BytesIO(bytes(item["content"])))
        except ImageReadError as e:
            self.upload_view.message(f"<b>{name}</b> cannot be read as an image: {html.escape(str(e))}")
            return
        predictions = self.predictor.with_tta(self.tta.value).predict_image(rgb, self.whole_image.value)
        if not predictions:
            self.upload_view.message(f"<b>No face found in {name}.</b> Tick <i>use the whole image if no face is "
                                     "found</i> to predict from the centred square of the whole picture.")
            return
        first = predictions[0]
        found = ("no face found: the centred square of the whole image was used" if not first.detected else
                 f"{len(predictions)} faces found, the largest shown" if len(predictions) > 1 else "1 face found")
        cam = compute_cams(self.predictor.model, first.crop[None], self.method.value, self.layer.value)[0]
        others = [f"face {i + 1}: {p.age:.0f} (90% interval {p.interval(0.9)[0]}-{p.interval(0.9)[1]})"
                  for i, p in enumerate(predictions)] if len(predictions) > 1 else []
        self.upload_view.show(first.crop, first.calibrated_probs, cam, [
            f"<b>{name}</b> ({rgb.shape[1]}x{rgb.shape[0]}): {found}", prediction_line(first),
            *([" &middot; ".join(others)] if others else []), self._settings_line()])
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        annotate(bgr, predictions)
        self.upload_picture.value = png(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    # ---- a folder -------------------------------------------------------------------------------
    def _on_folder(self, button=None) -> None:
        folder = Path(self.folder.value.strip()).expanduser()
        if not self.folder.value.strip() or not folder.is_dir():
            self.folder_result.value = f"<b>{html.escape(self.folder.value)}</b> is not a folder."
            return
        self.folder_result.value = f"Predicting every file under <code>{html.escape(str(folder))}</code> ..."
        out = self.out_dir / f"{folder.resolve().name or 'folder'}-predictions.csv"
        result = predict_paths([folder], self.predictor.with_tta(self.tta.value), out, progress=False)
        self.folder_result.value = (f"<p>{html.escape(result.describe())}</p>{download_link(out)}"
                                    + result.table.head(20).to_html(index=False, na_rep="", max_cols=15))


def _heading(text: str) -> widgets.HTML:
    return widgets.HTML(f"<h3 style='margin:4px 0'>{html.escape(text)}</h3>")


def download_link(path: Path) -> str:
    """An HTML link that downloads ``path`` from the page itself (files up to DOWNLOAD_LIMIT)."""
    data = path.read_bytes()
    if len(data) > DOWNLOAD_LIMIT:
        return f"<p>CSV: <code>{html.escape(str(path))}</code></p>"
    encoded = base64.b64encode(data).decode()
    return (f"<p><a download='{html.escape(path.name)}' href='data:text/csv;base64,{encoded}'>"
            f"Download {html.escape(path.name)}</a> ({len(data):,} bytes)</p>")
