"""Worker processes of the baselines, started by the benchmarks inside emulated peers (JSON lines on stdin/stdout)."""
