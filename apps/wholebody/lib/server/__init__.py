"""The request layer around MONAI Label's FastAPI app: 4xx answers for bad requests, checks before training starts."""
