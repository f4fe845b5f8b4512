"""The data owner's side: the site store and ingestion, the local round, the Flower ClientApp and the
routing service. Passage text is read only here; what leaves is a message of :mod:`fedprag.shared.wire`."""
