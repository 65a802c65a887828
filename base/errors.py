"""The two kinds of failure a user is told about in one line, and the wrapper that maps them to exit codes.

* ``UserError``: bad input the user can fix (a wrong path, a bad annotation file): exit 2.
* ``EnvironmentFailure``: the machine failed, not the input (no space left, an output that cannot be
  written, a worker process killed, a missing tool): exit 3. Finished work is kept; the message says
  what to do, and rerunning the same command continues. An ``OSError`` of that kind (``ENOSPC``,
  ``EDQUOT``, ``EROFS``, ``EACCES``, ...) raised anywhere in a script is reported the same way.

Neither prints a traceback. Preprocessing also exits 1 when it finished but skipped bad trials.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
from collections.abc import Callable

EXIT_SOME_SKIPPED = 1  # preprocessing finished, but some trials were bad input and were skipped
EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

EXIT_CODES_HELP = """\
exit codes:
  0    done
  2    bad input or arguments: the error line says what to fix
  3    the machine failed (no space left, output not writable, a worker process killed, a missing
       tool): finished work is kept; the error line names the cause and the remedy
  130  interrupted (Ctrl-C): finished work is kept; rerun the same command to resume
"""

# errno -> what went wrong, in words a user can act on; {path} is the file or folder involved
_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device holding {path}: free space (or choose another folder) and rerun",
    errno.EDQUOT: "disk quota exceeded writing {path}: free space in your quota (or choose another folder) and rerun",
    errno.EROFS: "{path} is on a read-only file system: choose a writable folder and rerun",
    errno.EACCES: "permission denied on {path}: make it accessible to this user (or choose another folder) and "
                  "rerun",
    errno.EPERM: "operation not permitted on {path}: make it accessible to this user (or choose another folder) "
                 "and rerun",
    errno.EIO: "input/output error on {path}: check the disk (dmesg), then rerun",
    errno.ENOMEM: "out of memory: lower the number of parallel jobs or free memory, then rerun",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower the number of parallel jobs, then rerun",
    errno.ENFILE: "the system ran out of open files: lower the number of parallel jobs, then rerun",
}
# numpy's ``tofile`` (behind ``np.save`` to an open file) reports a failed fwrite without an errno
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


class UserError(Exception):
    """Bad input a user can fix: the message is one sentence saying what is wrong and what to do."""


class EnvironmentFailure(Exception):
    """The machine failed, not the input: the message names the cause and what to do (one line)."""


class MissingTool(EnvironmentFailure, UserError):
    """A program or library the pipeline runs is not installed (exit 3; still a ``UserError`` for callers
    that catch those)."""


def os_error_message(exc: BaseException, default_path: str | None = None) -> str | None:
    """One line for an ``OSError`` that is a failure of the machine, else None (a bug, or a bad input).

    Args:
        exc: the exception.
        default_path: the file or folder to name when the error carries no file name (a failed
            ``write`` on an open file does not).
    """
    if not isinstance(exc, OSError):
        return None
    path = exc.filename if exc.filename is not None else default_path
    path = path if path is not None else "the output"
    if exc.errno is None and _SHORT_WRITE.search(str(exc)):
        return (f"a write under {path} stopped short (no space left on the device, or the quota is exceeded?): "
                "free space (or choose another folder) and rerun")
    if exc.errno not in _OS_ERRORS:
        return None
    return _OS_ERRORS[exc.errno].format(path=path)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a script's ``main``; map the failures a user can act on to one ``error:`` line and an exit code."""
    try:
        code = main(argv)
    except EnvironmentFailure as exc:
        return _fail(str(exc), EXIT_ENVIRONMENT)
    except UserError as exc:
        return _fail(str(exc), EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        return _fail(_OS_ERRORS[errno.ENOMEM], EXIT_ENVIRONMENT)
    except OSError as exc:
        message = os_error_message(exc)
        if message is None:
            raise
        return _fail(message, EXIT_ENVIRONMENT)
    return int(code or 0)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes each record to ``sys.stderr`` as it is when the record is emitted, not as it was when the
    handler was made: a script run twice in one process (an IDE console, a notebook, the tests) whose
    stderr was replaced in between never writes to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass  # always the current sys.stderr


def setup_logging(quiet: bool = False) -> None:
    """Log to stderr: INFO normally, WARNING only with ``--quiet``."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[_CurrentStderrHandler()],
        force=True,
    )
