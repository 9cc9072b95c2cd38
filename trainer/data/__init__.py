"""The data path: pre-flight of the partitions, the purged split, the streaming loader."""
