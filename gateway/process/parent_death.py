"""Children that never outlive their parent: Linux's parent-death signal, plus a check.

`die_with_parent(parent_pid)` runs in a freshly forked child (a worker of `gateway serve`, or a
child of `gateway demo` through `preexec_fn`, native binaries such as anvil included: the setting
survives exec). The kernel then sends SIGKILL to the child the moment its parent dies, whatever
killed the parent (kill -9 included). The parent may have died between fork and prctl: the check
of os.getppid() right after closes that window. Elsewhere than Linux, `parent_alive` polled by
the child is the only guard.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1

# Resolved once, before any fork: a child between fork and exec should call, not load.
_prctl = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # no libc prctl (e.g. an unusual libc): the poll still guards
        _prctl = None


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a child: be sent `sig` when the parent dies; exit now if it already has."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if not parent_alive(parent_pid):  # the parent died before prctl took effect
        os._exit(1)


def parent_alive(parent_pid: int) -> bool:
    """False once the parent is gone (its orphaned child is re-parented: the parent pid changes)."""
    return os.getppid() == parent_pid
