"""The report: `compare` turns the run folders into tables (tables.py), figures (figures.py) and paired
statistics (stats.py) and rewrites the generated blocks of README/docs (readme.py); `sample` plays a trained
model (samples.py, audio.py)."""

from gru_bench import lazy_exports

_EXPORTS = {
    "Report": "tables",
    "ablation_table": "tables",
    "write_ablation": "tables",
    "build_report": "tables",
    "collect_runs": "tables",
    "compare": "tables",
    "pairwise_comparison": "stats",
    "update_files": "readme",
    "sample": "samples",
    "render": "audio",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
