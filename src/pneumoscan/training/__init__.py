"""Training: configuration, the fit loop with early stopping, and the optimizer study."""
