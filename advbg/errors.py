"""The one error type the library raises for bad input; the CLI turns it into one line and exit code 1."""


class AdvbgError(Exception):
    """Bad input or an unusable file; the message names the problem and, where there is one, the fix."""


class StoreError(AdvbgError, ValueError):
    """A store file that is missing, malformed, incomplete or inconsistent."""


class ModelError(AdvbgError, ValueError):
    """A classifier that cannot be built or loaded as asked."""
