"""The parameter server's wire: its frame types and the layout of a push.

Frames (docs/PROTOCOL.md, "Parameter server"):
  ps.read   worker -> shard   meta {req, clock, tables, sparse}; one int64 row array per
                              sparse table. Control priority when small.
  ps.value  shard -> worker   meta {req, clock, tables}; one value array per table.
  ps.push   worker -> shard   meta {clock, tables, sparse}; per table [rows,] delta.
                              Data priority, so it never overtakes the worker's earlier
                              pushes; it also says "iteration `clock` is complete".
  ps.done   worker -> shard   the worker will push no more.
  ps.where  worker -> shard   control, meta {}: a restarted worker asks where it was.
  ps.here   shard -> worker   control, meta {clock}: the worker's next clock at this shard
                              (FINISHED, 2**62, if it had finished there).
  ps.error  shard -> sender   meta {reason, detail}: a request the shard refused.
A shard that checkpoints (`checkpoint=PATH`) also uses:
  ps.value  meta + {durable}: the worker's clock in the shard's latest checkpoint; the
                              worker keeps its pushes from that clock on, to replay them.
  ps.bye    shard -> worker   control: the worker's ps.done is in a checkpoint; it may exit
                              (it repeats ps.done until it hears this).
  ps.resume shard -> worker   control, meta {clock}: the shard restarted from a checkpoint
                              that has the worker at `clock`: replay the pushes from there
                              and resend a pending read.

The clock of a push is its sequence number on the (worker, shard) channel: a push of a clock
the shard already has (from a worker restarted after a crash, which redoes the clock it was
in, or replaying for a restarted shard) is counted `duplicate_pushes` and not applied again.
"""

from __future__ import annotations

import numpy as np

from geoml.bus import Message

READ, VALUE, PUSH, DONE, ERROR = "ps.read", "ps.value", "ps.push", "ps.done", "ps.error"
WHERE, HERE = "ps.where", "ps.here"
BYE, RESUME = "ps.bye", "ps.resume"
#: How often a finished worker repeats ps.done to a checkpointing shard until ps.bye.
DONE_RETRY_S = 1.0


def unpack_deltas(msg: Message) -> list[tuple[str, np.ndarray | None, np.ndarray]]:
    """(table, rows or None, delta) per table of a frame laid out as ps.push (also
    fed.update): per table, its row array if its `sparse` flag is set, then its delta.
    ValueError when the tables, the sparse flags and the arrays do not match."""
    tables, sparse = msg.meta["tables"], msg.meta["sparse"]
    if not isinstance(tables, list) or not isinstance(sparse, list) \
            or len(tables) != len(sparse) \
            or len(msg.arrays) != len(tables) + sum(map(bool, sparse)):
        raise ValueError(f"{msg.type}: tables, sparse flags and arrays do not match")
    arrays = iter(msg.arrays)
    return [(table, next(arrays) if is_sparse else None, next(arrays))
            for table, is_sparse in zip(tables, sparse, strict=True)]
