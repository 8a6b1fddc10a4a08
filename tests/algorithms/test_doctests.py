"""The runnable examples in the metrics docstrings are checked, so they stay true."""

import doctest

from flead_app.algorithms import metrics


def test_metrics_docstring_examples():
    result = doctest.testmod(metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 30
    assert result.failed == 0
