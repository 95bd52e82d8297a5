"""Gaia's roles: a region's PS shard with a significance filter, the region's mirror, and
the overlay hub of a group of regions.

Frames (docs/PROTOCOL.md, "Gaia"); element indices are flat indices into a table's
global array (row * columns + column); updates use the compact form of `sparse_codec`
(meta {tables, enc}, per table an index part and `<f4` values):
  gaia.update   shard -> own mirror: meta {clock, final, tables, enc}. `clock`: the
                region's local clocks completed; `final`: its last update (after a flush).
                mirror/hub -> mirror/hub: meta {seq, clocks {region: clock}, final
                [regions], tables, enc}: the summed updates of the regions in `clocks`.
  gaia.barrier  mirror/hub -> mirror/hub, control, sent just before the gaia.update with the
                same `seq` (when earlier updates are still queued on the path, or always):
                meta {seq, tables, enc}, one index array (rows) per table.
                The selective barrier: reads of those rows wait until the values arrive.
  gaia.block    mirror -> own shard, control: meta {origin, seq, tables, enc}: the rows of
                this shard a barrier named.
  gaia.apply    mirror -> own shard: add these remote updates; meta {origin, seq, tables,
                enc}; unblocks the rows of the gaia.block with the same origin and seq.
  gaia.allow    mirror -> own shard, control: meta {clock}: reads beyond this clock wait
                (the mirror clock: slowest other region + DS).
  gaia.stop     mirror -> own shard, data (after every apply): every region has finished.
Recovery of a shard restarted from its checkpoint (roles/ps.py has the worker side):
  gaia.apply    meta + {n}: numbered 1, 2, ... per shard; the shard ignores an n it has, and
                the mirror keeps each apply until the shard's checkpoint has it.
  gaia.update   shard -> mirror: meta + {applied, ack}: `applied` is the last n in the
                shard's latest checkpoint (the mirror forgets those); with `ack` the
                shard keeps the update (it is in its checkpoint) until gaia.got.
  gaia.got      mirror -> shard, control, meta {clock, final}: the mirror has the shard's
                updates up to `clock` (and its final one); a repeated update is ignored.
  gaia.resume   shard -> mirror, control, meta {applied}: the shard restarted from a
                checkpoint with applies up to `applied`: the mirror sends it the later
                ones, the blocks of barriers whose values have not come, the current
                gaia.allow and, if sent already, gaia.stop.
  gaia.stopped  shard -> mirror, control: a checkpointing shard has gaia.stop in its
                checkpoint; the mirror exits only when each has said so.
Recovery of a mirror restarted from its checkpoint (docs/PROTOCOL.md §4):
  gaia.update   mirror/hub -> mirror/hub: meta + {ack}: `seq` counts 1, 2, ... per
                destination; with `ack` the sender keeps it until gaia.ack.
  gaia.ack      mirror/hub -> the update's sender, control, meta {seqs}: these are in the
                receiver's checkpoint (a hub: received).
  gaia.restarted mirror -> its shards and peers, control: resend what I have not
                acknowledged (shards: their updates, and gaia.stopped if stopped).
"""

from .hub import GaiaHub
from .mirror import GaiaMirror
from .shard import GaiaShard
from .wire import (
    ACK,
    ALLOW,
    APPLY,
    BARRIER,
    BARRIER_MODES,
    BLOCK,
    GOT,
    RESTARTED,
    RESUME,
    STOP,
    STOPPED,
    UPDATE,
)

__all__ = ["ACK", "ALLOW", "APPLY", "BARRIER", "BARRIER_MODES", "BLOCK", "GOT", "RESTARTED",
           "RESUME", "STOP", "STOPPED", "UPDATE", "GaiaHub", "GaiaMirror", "GaiaShard"]
