"""The one exception type a user sees: a one-line reason, printed by the CLI with exit code 2."""


class NstlabError(Exception):
    """A problem the user can fix (bad input file, bad parameter, missing weights).

    The message is one line that names the file or key, says what is wrong and what to do.
    The CLI prints it without a traceback and exits with code 2.
    """


class ConfigError(NstlabError):
    """A bad key or value in params.yaml or a `-S key=value` override."""


class ImageError(NstlabError):
    """An image that cannot be decoded or is unusable (corrupt, too large, too small)."""


class DownloadError(NstlabError):
    """A download that failed after all retries, or whose checksum does not match."""
