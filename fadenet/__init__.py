"""FADE-Net workbook: lightweight facial age estimation, reproduced chapter by chapter."""
from .config import Config, ConfigError, load_config


def pretrained(device: str = "cpu"):
    """The FADE-Net that ships in the package, in eval mode, its file's hash checked (see
    ``fadenet/pretrained/MODEL_CARD.md``). Imported on first use: ``import fadenet`` stays light."""
    from .shipped import pretrained as load
    return load(device)


def photo_model(cfg):
    """The model chapter 08 works with (``eval.photo_model``: shipped or this profile's run) and
    the faces it was trained on; see :func:`fadenet.shipped.photo_model`."""
    from .shipped import photo_model as choose
    return choose(cfg)


__all__ = ["Config", "ConfigError", "load_config", "photo_model", "pretrained"]
__version__ = "0.1.0"
