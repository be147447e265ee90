"""cbhub's benchmark suite: cbhub beside a bare aiohttp baseline (and nchan, when installed),
driven by the same load, reported as ratios measured in the same run. See docs/performance.md.
"""
