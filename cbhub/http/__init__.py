"""HTTP routes, split by audience: public ingest (/cb), client API (/v1), and operations."""
