"""Parameter-server roles: `PSShard` (a key range of every table, roles/ps_shard.py) and
`PSWorker` (roles/ps_worker.py); their frames are in roles/ps_wire.py.

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

from .ps_shard import PSShard
from .ps_wire import (
    BYE,
    DONE,
    DONE_RETRY_S,
    ERROR,
    HERE,
    PUSH,
    READ,
    RESUME,
    VALUE,
    WHERE,
    unpack_deltas,
)
from .ps_worker import PSWorker, WorkerFailed

__all__ = ["BYE", "DONE", "DONE_RETRY_S", "ERROR", "HERE", "PUSH", "READ", "RESUME", "VALUE",
           "WHERE", "PSShard", "PSWorker", "WorkerFailed", "unpack_deltas"]
