"""The seeded simulator (cluster.py: whole clusters of node cores, node/core.py, over in-memory
stores, with a faulty network, crashes and liars) and the signed-transaction factory
(factory.py) that scripts and tests share. Nothing here is imported by the node itself."""
