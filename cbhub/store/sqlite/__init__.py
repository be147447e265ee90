"""The embedded default store: one SQLite file in WAL mode (store.py), its schema migrations and
its checkpointer."""
