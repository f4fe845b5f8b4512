"""The dataset schema, the fictional knowledge benchmark, and passage augmentation."""
