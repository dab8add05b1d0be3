"""ModelServeShim: one REST call turns an open-source LLM into a running OpenAI-compatible service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modserv-shim")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
