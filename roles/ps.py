"""Parameter-server roles: `PSShard` (a key range of every table, roles/ps_shard.py) and
`PSWorker` (roles/ps_worker.py). Their frames, and what a push's clock means, are
described in roles/ps_wire.py (and docs/PROTOCOL.md, "Parameter server")."""

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
