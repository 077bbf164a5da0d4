"""The local datastore and the checks of what is saved in it (readable 3D CT in HU, labels that fit their image)."""
