"""Training: estimators that fit models to data. Models never import this package."""
