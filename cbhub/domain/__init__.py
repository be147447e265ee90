"""The domain: what cbhub keeps (callbacks, deliveries) and the pure rules it applies to them
(how a body reads, a signature verifies, an address is allowed). No I/O, no HTTP, no SQL."""
