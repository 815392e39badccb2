"""The one exception type for mistakes a user can make.

Bad data, bad configuration and bad arguments raise :class:`SelmaskError`
(a ``ValueError``) with the offending file, key or argument named in the
message. The CLI prints that message alone and exits non-zero, so a user sees
one clear line instead of a traceback from deep inside torch.
"""


class SelmaskError(ValueError):
    """A problem with the user's data, configuration or arguments."""
