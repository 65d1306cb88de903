"""The producer side: the outbox (written in the caller's transaction), the relay that publishes it
with confirms, the confirmed publisher and its connections, the broker topology, stream heartbeats.
"""
