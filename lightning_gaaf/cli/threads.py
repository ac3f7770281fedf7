"""The thread policy of a program, chosen and applied before torch is imported.

Every program that trains (``gaaf-fit``, ``gaaf-tune``, ``gaaf-reproduce``) calls :func:`start_threads`
before its first heavy import, since the OpenMP runtime reads its settings once, when torch loads it
(:mod:`lightning_gaaf.run.threads` says what is chosen and why).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_gaaf.run.threads import ThreadPolicy


def start_threads(prog: str) -> ThreadPolicy:
    """Choose and apply the thread policy; a malformed ``GAAF_THREADS`` is one line and exit status 2."""
    from lightning_gaaf.run.threads import apply_thread_policy, choose_thread_policy

    try:
        policy = choose_thread_policy()
    except ValueError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        raise SystemExit(2) from None
    apply_thread_policy(policy)
    return policy
