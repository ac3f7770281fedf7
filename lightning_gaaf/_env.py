"""On/off environment switches (``GAAF_COMPILE``, ``GAAF_NATIVE``), read once per process."""

from __future__ import annotations

import functools
import os


@functools.cache
def env_switch(name: str) -> bool:
    """An on/off environment switch (default on; ``0``/``false``/``no``/``off`` = off).

    Read once per process, at the first GAAF call: it sits on every layer's hot path. Change it at
    run time with :func:`lightning_gaaf.activations.set_compile` / :func:`lightning_gaaf.native.set_native`.
    """
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")
