"""What each saved correction cost against the prediction the annotator was served (docs/corrections.md)."""
