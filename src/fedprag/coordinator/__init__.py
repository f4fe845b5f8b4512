"""The coordinator: the Flower ServerApp that runs federated rounds, the aggregation strategies, central
differential privacy, and the versioned expert-pool registry."""
