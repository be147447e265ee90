"""Waiting and fan-out: the hub (the one door into the domain), the registry of waiters, and the
feeds that stream to websocket and SSE connections. No SQL, no HTTP."""
