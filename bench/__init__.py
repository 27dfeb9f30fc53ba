"""Dreamsmith's benchmarks.

``python -m bench --quick`` (or ``--full``) runs all of them on the embedded prior and writes
``results.json`` and ``REPORT.md`` with plots; see ``bench/run.py``. The single-purpose scripts
(``sds_step.py``, ``server_bench.py``, ``text_to_3d_quality.py``, ``paint_quality.py``,
``sketch_quality.py``) still run on their own as ``python bench/NAME.py``.
"""

# Before anything here imports torch: its OpenMP threads must sleep when idle (engine.cpu_sharing).
from engine import cpu_sharing  # noqa: F401, E402
