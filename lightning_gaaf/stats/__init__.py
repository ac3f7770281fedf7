"""The run's ``stats/`` files: their schema (write and read, versioned) and the figures drawn from them.

The monitors in :mod:`lightning_gaaf.callbacks` write these files; ``gaaf-report`` and
``gaaf-reproduce`` read them back. Nothing else knows the file layout.
"""

from lightning_gaaf.stats.schema import (
    FILES,
    SCHEMA_VERSION,
    StatsFileError,
    StatsWriteError,
    find_stats_file,
    read_stats,
    write_stats,
)

__all__ = [
    "FILES",
    "SCHEMA_VERSION",
    "StatsFileError",
    "StatsWriteError",
    "find_stats_file",
    "read_stats",
    "write_stats",
]
