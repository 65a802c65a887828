"""How the ranks of a ``torchrun`` run leave: together when the run succeeded, at once (one line each) when it failed.

Why (issue 22). ``destroy_process_group`` only drops ``torch.distributed``'s own references to the
process group. ``torch.distributed.nn.functional`` (imported by DDP) takes ``group=group.WORLD`` as a
default argument, evaluated when it is imported: imported after the process group exists, it keeps
the gloo backend, its worker threads and its sockets alive after ``destroy_process_group``, until the
interpreter shuts down. A gloo worker that drops the last reference to a finished collective there
(the final ``all_gather_object``) must take the GIL to free the tensors; Python 3.11 ends a thread
that asks for the GIL during finalization with ``pthread_exit``, whose unwinding through the worker's
C++ frames (``c10d::ProcessGroupGloo::runLoop``) calls ``std::terminate``: "terminate called without
an active exception", SIGABRT (core dumps of a minimal repro show exactly this stack). Rank 1
leaves right after the last collective while rank 0 still writes its files, so it was the one that
aborted, now and then (more often on a loaded machine). Hence:

* ``init_distributed`` imports ``torch.distributed.nn`` before joining, so that nothing but
  ``torch.distributed`` holds the process group, and leaving it joins gloo's threads while Python is
  alive;
* on success every rank waits at an exit barrier (``EXIT_BARRIER_TIMEOUT``) until all are done
  (rank 0's last writes come after the last collective), then leaves the process group;
* on failure a rank neither waits nor tears the process group down (a collective of its own may
  still be in flight; tearing down would wait for the 30-minute timeout): it prints its one line and
  ends at once (``exit_process``), which closes its connections, so that the collective the other
  ranks wait in fails now. They then print one line each (``lost_peer_message``) and end the same
  way; ``torchrun``'s SIGTERM to the survivors becomes one line too (``stop_on_sigterm``).

``FAIL_RANK_ENV`` makes one rank fail on purpose at the start of its first epoch, for the tests and
``benchmarks/ddp_stress.py`` only.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator, Mapping
from typing import NoReturn

import torch.distributed as dist

from base.errors import EnvironmentFailure, UserError
from base.training.distributed import DistributedContext

logger = logging.getLogger(__name__)

EXIT_BARRIER_TIMEOUT = datetime.timedelta(minutes=10)  # rank 0's last writes (metrics, plots, summary)
FAIL_RANK_ENV = "ABAW2_TEST_FAIL_RANK"  # tests only: this rank raises at the start of its first epoch

# What gloo and torch.distributed say when a peer process is gone or did not answer in time.
_LOST_PEER_PATTERN = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|(?:Rank \d+ )?failed to pass monitoredBarrier"
    r"|[Tt]imed out|Socket Timeout"
)


def lost_peer_message(rank: int, exc: BaseException) -> str | None:
    """One line for an error raised because another rank is gone or silent (None for any other error).

    >>> lost_peer_message(0, RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:9892. This is ..."))
    'rank 0: another rank stopped or did not answer (Connection closed by peer [127.0.0.1]:9892); its own error \
line says why: fix that, then rerun the same command with --resume 1'
    >>> lost_peer_message(0, ValueError("a bug")) is None
    True
    """
    text = str(exc)
    match = _LOST_PEER_PATTERN.search(text)
    if match is None and not isinstance(exc, dist.DistError):
        return None
    if match:  # gloo's sentence, without the source location before it and the advice after it
        reason = text[match.start():].splitlines()[0].split(". ")[0].rstrip(".")
    else:
        reason = (text.strip().splitlines() or [type(exc).__name__])[0]
    return (f"rank {rank}: another rank stopped or did not answer ({reason}); its own error line says why: "
            "fix that, then rerun the same command with --resume 1")


def fail_if_asked(rank: int, environ: Mapping[str, str] | None = None) -> None:
    """Raise on the rank named by ``FAIL_RANK_ENV`` (the tests' way to make one rank fail)."""
    environ = os.environ if environ is None else environ
    if environ.get(FAIL_RANK_ENV, "") == str(rank):
        raise EnvironmentFailure(f"rank {rank} failed on purpose ({FAIL_RANK_ENV}={rank}, a test hook)")


def exit_barrier(context: DistributedContext, timeout: datetime.timedelta = EXIT_BARRIER_TIMEOUT) -> None:
    """Wait until every rank has finished its work (gloo: a monitored barrier that names a missing rank)."""
    if dist.get_backend() == dist.Backend.GLOO:
        dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
    else:
        dist.barrier(device_ids=[context.device.index], timeout=timeout)


def leave_together(context: DistributedContext, timeout: datetime.timedelta = EXIT_BARRIER_TIMEOUT) -> None:
    """End of a successful run: wait for every rank at the exit barrier, then leave the process group."""
    if not dist.is_initialized():
        return
    try:
        exit_barrier(context, timeout)
    except Exception as exc:  # another rank is gone or stuck: this one's work is done, the run's is not
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EnvironmentFailure(lost_peer_message(context.rank, exc)
                                 or f"rank {context.rank}: the exit barrier failed ({first_line})") from None
    gc.collect()  # in case a DDP wrapper sits in a reference cycle: it holds the process group
    dist.destroy_process_group()
    logger.info("every rank finished; the process group is left")


@contextlib.contextmanager
def stop_on_sigterm(rank: int) -> Iterator[None]:
    """Turn the SIGTERM that ``torchrun`` sends the other ranks when one failed into one error line.

    Once the body failed, SIGTERM stays ignored: the rank is printing its line and ending by itself.
    """

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise EnvironmentFailure(f"rank {rank}: stopped by SIGTERM (torchrun stops every rank when one failed; "
                                 "that rank's error line says why)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except BaseException:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def distributed_run(context: DistributedContext) -> Iterator[None]:
    """Run the body of a ``torchrun`` rank, then leave the process group with the other ranks.

    A failure is left to propagate (the process group stays: ``exit_process`` ends the rank), as one
    line when another rank caused it. Nothing changes for a single-process run.
    """
    if not context.is_distributed:
        yield
        return
    with stop_on_sigterm(context.rank):
        try:
            yield
        except Exception as exc:
            message = None if isinstance(exc, (UserError, EnvironmentFailure)) else lost_peer_message(context.rank, exc)
            if message is None:
                raise
            raise EnvironmentFailure(message) from None
        leave_together(context)


def exit_process(code: int) -> NoReturn:
    """End the script with ``code``; a failed rank of a ``torchrun`` run ends at once.

    ``os._exit`` skips the interpreter's shutdown, where gloo's threads, still held by the failed
    run's DDP model, would abort the process (see the module docstring); it closes this rank's
    connections at once, so that the other ranks fail in seconds.
    """
    if code == 0 or not dist.is_initialized():
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
