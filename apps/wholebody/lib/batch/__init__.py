"""Batch segmentation: MONAI Label's ``POST /batch/infer`` made to work per study (``server_task``,
``server_request``), and archive-scale runs on Ray Data (``python -m lib.batch``: ``pipeline``,
``stages``, ``model``, ``sources``, ``manifest``, ``progress``). Nothing here imports Ray at package
import, so the server loads the endpoint parts without it."""
