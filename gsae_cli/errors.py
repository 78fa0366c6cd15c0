"""User-facing errors: each maps to an exit code and carries a one-paragraph message naming the problem and the fix."""


class GsaeError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(GsaeError):
    """Bad input or configuration (exit 2)."""

    exit_code = 2


class StoreError(GsaeError):
    """A missing, incomplete, corrupt or mismatched activation store (exit 2)."""

    exit_code = 2


class ModelError(GsaeError):
    """A model that cannot be loaded (not cached offline, unknown name) (exit 2)."""

    exit_code = 2


class ArtifactError(GsaeError):
    """A half-written or inconsistent artifact that cannot be resumed (exit 2)."""

    exit_code = 2
