"""FADE-Net workbook: lightweight facial age estimation, reproduced chapter by chapter."""
from .config import Config, ConfigError, load_config
from .runtime import keep_freed_memory

keep_freed_memory()

__all__ = ["Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
