"""FADE-Net workbook: lightweight facial age estimation, reproduced chapter by chapter."""
from .config import Config, ConfigError, load_config


def chapter(profile=None, overrides=(), data: bool = True, show: bool = True):
    """A chapter's configuration, faces, split and caption in one call (see :mod:`fadenet.chapters`)."""
    from .chapters import chapter as setup
    return setup(profile, overrides, data=data, show=show)


def pretrained(device: str = "cpu"):
    """The FADE-Net that ships in the package, in eval mode, its file's hash checked (see
    ``fadenet/pretrained/MODEL_CARD.md``). Imported on first use: ``import fadenet`` stays light."""
    from .shipped import pretrained as load
    return load(device)


def photo_model(cfg):
    """The model users get (``eval.photo_model``: shipped or this profile's run; chapters 05 and
    08 study it) and the faces it was trained on; see :func:`fadenet.shipped.photo_model`."""
    from .shipped import photo_model as choose
    return choose(cfg)


__all__ = ["Config", "ConfigError", "chapter", "load_config", "photo_model", "pretrained"]
__version__ = "0.1.0"
