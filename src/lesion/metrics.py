"""What a lesion is measured by: ``lesion.metrics.Classification()``, ``NextTokenLoss()``, ``KL()``,
``LogitDiff(a, b)``, ``MSE()``, ``Scalar(fn)``, ``Joint(first, *others)`` (several metrics in one pass),
and the ``Metric`` protocol a new metric follows (see ``lesion.core.metric.Metric``: ``main``, ``curve``,
``loss``, ``close``).

>>> import lesion
>>> lesion.metrics.Classification().main, lesion.metrics.LogitDiff(0, 1).higher_is_better
('loss', True)
"""

from lesion.core.metric import MSE, Classification, Joint, Metric, Scalar
from lesion.core.metric_lm import KL, LogitDiff, NextTokenLoss

__all__ = ["KL", "MSE", "Classification", "Joint", "LogitDiff", "Metric", "NextTokenLoss", "Scalar"]
