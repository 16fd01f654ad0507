"""Fixtures for tests and benchmarks (not used by training or sampling): tiny SD-layout parts with random weights
(``tiny``), real-size architectures (``presets``) and side-by-side timing (``timing``; also the ablation's)."""
