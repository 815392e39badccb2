"""The one exception type for mistakes a user can make.

Bad data, bad configuration and bad arguments raise :class:`SelmaskError`
(a ``ValueError``) with the offending file, key or argument named in the
message. The CLI prints that message alone and exits non-zero, so a user sees
one clear line instead of a traceback from deep inside torch.
"""


class SelmaskError(ValueError):
    """A problem with the user's data, configuration or arguments."""


_WORKER_HEADER = "in DataLoader worker process"


def one_line_message(error: BaseException) -> str:
    """The message of ``error`` on one line, as the CLI prints it.

    A data error raised inside a DataLoader worker (``num_workers > 0``)
    reaches the main process re-raised by torch with the worker's whole
    traceback as its message; the user's message is its last line
    (``selmask_lib.errors.SelmaskError: <message>``), so that is kept.
    """
    text = str(error)
    if _WORKER_HEADER in text.split("\n", 1)[0]:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


class DivergenceError(SelmaskError):
    """Training produced a non-finite loss or weights.

    The run stops at once: nothing non-finite is ever saved, the last good
    checkpoint is kept, and the run is marked ``failed`` so that no cache
    reuses it. Usually the learning rate is too high for this setting.
    """
