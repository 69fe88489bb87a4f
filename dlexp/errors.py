"""The one exception type users see as a clear message instead of a traceback."""


class DlexpError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths) that they can fix.

    The message is one paragraph: what is wrong, where, and what would work.
    """


def user_error(err: BaseException) -> DlexpError | None:
    """The DlexpError behind `err`, if any (hydra's instantiate wraps what targets raise)."""
    while err is not None:
        if isinstance(err, DlexpError):
            return err
        err = err.__cause__
    return None
