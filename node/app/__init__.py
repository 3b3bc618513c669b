"""The deterministic tokenized-deposit ledger (sans-I/O).

Public surface: ``ledger.Ledger`` (execute a committed batch; read-side queries;
check_invariants), ``validate.check_envelope`` (the API's stateless admission check, raising
``tx.InvalidTransaction``), ``codec.envelope_tx_id`` and ``codec.decode_result``. Module map:
tx (dataclasses, result codes) <- codec (the only protobuf user) <- validate (stateless checks)
<- rules (one handler per kind, money via money.py, state via state.py) <- ledger (batches,
overlays, state root) and queries (read side, invariants).
"""
