"""Model weights: official files in the bundle layout (background download, md5), and checkpoints written atomically."""
