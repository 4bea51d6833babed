"""The package version, in one place below every module that records it (manifests, result
JSON); ``torch_ntk.__version__`` is this value. Keep it equal to pyproject.toml's."""

VERSION = "0.2.0"
