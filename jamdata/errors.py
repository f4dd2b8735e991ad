"""The ground floor of user errors: `UserError` means 'the user's input, config or command is
wrong', and the command line prints it as one line (a traceback only with `-v`).

Every module raises its own subclass (`ConfigError`, `InputError`, `ManifestError`, ...), defined
next to the code that raises it; this module imports nothing, so any layer may use it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: the message names the key, file or record and what to do."""


class ModelError(UserError, ValueError):
    """Model weights or a fusion request that cannot be used (jamtrain.models)."""


# What the command line answers in one line: every UserError, and the operating system's own
# answers to a path the user gave.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, PermissionError)


def user_error_names() -> set[str]:
    """Class names of every UserError subclass defined so far (to recognise one in the text of
    an exception that a Beam worker process sent back)."""
    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names | {k.__name__ for k in USER_ERRORS}
