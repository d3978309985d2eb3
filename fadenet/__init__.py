"""FADE-Net workbook: lightweight facial age estimation, reproduced chapter by chapter."""
from .config import Config, ConfigError, load_config
from .runtime import keep_freed_memory

keep_freed_memory()



def pretrained(device: str = "cpu"):
    """The FADE-Net that ships in the package, in eval mode, its file's hash checked (see
    ``fadenet/pretrained/MODEL_CARD.md``). Imported on first use: ``import fadenet`` stays light."""
    from .shipped import pretrained as load
    return load(device)


__all__ = ["Config", "ConfigError", "load_config", "pretrained"]
__version__ = "0.1.0"
