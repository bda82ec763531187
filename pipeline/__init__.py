"""eegmi: influential VAE factors and emotion-carrying scalp regions in EEG."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eegmi")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
