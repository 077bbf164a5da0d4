"""The request layer around MONAI Label's FastAPI app: where each request runs (worker threads, the bounded
inference queue), 4xx answers for bad requests, checks before training starts, one training at a time."""
