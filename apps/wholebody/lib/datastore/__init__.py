"""The local datastore, the checks of what is saved in it (readable 3D CT in HU, labels that fit their image),
and durable writes: atomic files and a lock shared by threads and processes."""
