"""Model versions: every training run that publishes weights is a numbered version kept on disk (docs/model-versions.md)."""
