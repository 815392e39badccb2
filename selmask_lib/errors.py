"""The one exception type for mistakes a user can make.

Bad data, bad configuration and bad arguments raise :class:`SelmaskError`
(a ``ValueError``) with the offending file, key or argument named in the
message. The CLI prints that message alone and exits non-zero, so a user sees
one clear line instead of a traceback from deep inside torch.
"""


class SelmaskError(ValueError):
    """A problem with the user's data, configuration or arguments."""


class DivergenceError(SelmaskError):
    """Training produced a non-finite loss or weights.

    The run stops at once: nothing non-finite is ever saved, the last good
    checkpoint is kept, and the run is marked ``failed`` so that no cache
    reuses it. Usually the learning rate is too high for this setting.
    """
