"""Label-shift (prior) adaptation on an unlabeled batch: Saerens, Latinne & Decaestecker (2002).

When the share of pneumonia in deployment differs from training, a calibrated model's
probabilities are off by the prior ratio. EM estimates the new prevalence from the model's own
outputs on the batch (no labels) and rescales the probabilities to it. It is reported apart from
the fixed-threshold result, and says that it used no labels.
"""

import numpy as np


def adapt_to_prior(probabilities: np.ndarray, train_prior: float, max_iter: int = 200,
                   tolerance: float = 1e-7) -> tuple[float, np.ndarray]:
    """(estimated prevalence, probabilities rescaled to it) by EM over the batch."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    prior = train_prior
    adjusted = p
    for _ in range(max_iter):
        positive = prior / train_prior * p
        negative = (1 - prior) / (1 - train_prior) * (1 - p)
        adjusted = positive / (positive + negative)
        new_prior = float(adjusted.mean())
        if abs(new_prior - prior) < tolerance:
            prior = new_prior
            break
        prior = new_prior
    return prior, adjusted
