"""Helpers shared by the research scripts."""
import pandas as pd


def winsorize(values: pd.Series, limit: float) -> pd.Series:
    """Clip a cross-section at ``limit`` standard deviations from its mean."""
    mean, std = values.mean(), values.std()
    return values.clip(mean - limit * std, mean + limit * std)


def zscore(values: pd.Series) -> pd.Series:
    std = values.std()
    return (values - values.mean()) / std if std > 0 else values * 0.0
