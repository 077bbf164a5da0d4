"""VISTA3D: prompts and class names, the shared network runtime with its caches, and the point-window inferers."""
