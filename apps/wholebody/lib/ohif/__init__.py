"""OHIF as this server serves it at ``/ohif/``: the viewer in the monailabel wheel, with the app's own
``app-config.js`` (the MONAI Label mode with OHIF's segmentation tools, stores to the PACS through the proxy)."""
