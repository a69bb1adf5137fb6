"""Pure quantitative-research library for qsdk.

Submodules (import them explicitly; nothing heavy is imported here):

- :mod:`qsdk.quant.calendar`  -- exchange trading sessions and date partitions.
- :mod:`qsdk.quant.synthetic` -- deterministic synthetic OHLCV panels with an optional planted signal.
- :mod:`qsdk.quant.features`  -- look-ahead-free per-symbol features and forward-return labels.
- :mod:`qsdk.quant.pit`       -- point-in-time (as-of) joins with event time and knowledge time.
- :mod:`qsdk.quant.metrics`   -- alpha evaluation (IC, quantiles, turnover, long/short, performance).

All functions are pure: they take and return pandas objects and perform no I/O.
"""
