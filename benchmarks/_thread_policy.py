"""lightning_gaaf's thread policy (:mod:`lightning_gaaf.run.threads`), applied when imported.

A benchmark imports this module first among its third-party imports (the leading underscore sorts
it ahead of ``torch``): torch's OpenMP runtime reads the spin count once, when torch loads. The
benchmarks then time what the programs run with; ``GAAF_THREADS=off`` times torch's own defaults.
"""

from lightning_gaaf.run.threads import apply_thread_policy, choose_thread_policy

POLICY = choose_thread_policy()
apply_thread_policy(POLICY)
