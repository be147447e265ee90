"""The shared store: one PostgreSQL database behind many instances (store.py), its schema, and
the feed that tells each instance what the others committed. Needs asyncpg (cbhub[postgres])."""
