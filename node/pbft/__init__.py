"""Sans-I/O PBFT replica: step(message) / tick() -> list[Action]. No grpc, lmdb, asyncio,
threading, time, random or os in here; see docs/ARCHITECTURE.md."""
