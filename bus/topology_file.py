"""Topology files (TOML -> validated Topology).

The loader reads the whole file and reports every problem in one TopologyError naming
the file, so a user fixes a file in one pass. See topologies/tiny.toml for the schema.
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from .address import is_valid_region_name
from .errors import TopologyError
from .link import LinkSpec
from .topology import (
    DEFAULT_BURST_S,
    KM_PER_MS,
    OverlayGroup,
    Region,
    Topology,
    default_burst,
    great_circle_km,
)

_TOP_KEYS = {"name", "description", "routing", "hub", "defaults", "regions", "links", "overlay"}
_DEFAULT_KEYS = {
    "lan_rate_mbps", "lan_latency_ms", "wan_rate_mbps", "burst_bytes", "queue_limit_bytes",
    "chunk_bytes", "machine_usd_per_hour", "egress_usd_per_gb", "workers", "ps_shards",
    "host", "base_port", "speed",
}
_REGION_KEYS = {
    "name", "lat", "lon", "machine_usd_per_hour", "egress_usd_per_gb", "sovereign", "workers",
    "ps_shards", "host", "port", "tap_port", "lan_rate_mbps", "lan_latency_ms", "speed",
}
_LINK_KEYS = {"between", "from", "to", "rate_mbps", "latency_ms", "burst_bytes",
              "queue_limit_bytes", "chunk_bytes"}
_OVERLAY_KEYS = {"name", "hub", "members"}



def resolve_path(name_or_path: str | Path) -> Path:
    """A topology path, or the name of one shipped with geoml (`ss_wan`, `tiny.toml`)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    stem = path.name if path.suffix == ".toml" else f"{path.name}.toml"
    shipped = resources.files("geoml.topologies").joinpath(stem)
    if shipped.is_file():
        return Path(str(shipped))
    names = sorted(p.name for p in resources.files("geoml.topologies").iterdir()
                   if p.name.endswith(".toml"))
    raise TopologyError(str(name_or_path), [f"no such file, and not a shipped topology "
                                            f"(shipped: {', '.join(names)})"])


def load_topology(name_or_path: str | Path) -> Topology:
    """Load and validate a topology file; raise TopologyError listing every problem."""
    path = resolve_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_topology(data, str(path))


def _wan_pairs(regions: list[Region], by_name: dict[str, Region], routing: str,
               star_hub: str | None, overrides: dict[tuple[str, str], dict[str, Any]]
               ) -> list[tuple[Region, Region]]:
    """The ordered pairs of regions that get a WAN link, in the regions' order: every pair
    for a full mesh; for star routing, only those with the hub and those the file lists
    (the others are never used: traffic between them goes through the hub). Star routing
    is not an all-pairs loop, so a topology of 10,000 edge sites parses in well under a
    second instead of tens of seconds."""
    if routing != "star":
        return [(a, b) for a in regions for b in regions if a.name != b.name]
    order = {r.name: i for i, r in enumerate(regions)}
    names = set(overrides)
    if star_hub in order:
        names |= {(star_hub, r.name) for r in regions} | {(r.name, star_hub) for r in regions}
    pairs = sorted((p for p in names if p[0] != p[1]), key=lambda p: (order[p[0]], order[p[1]]))
    return [(by_name[a], by_name[b]) for a, b in pairs]


def parse_topology(data: dict[str, Any], source: str = "<topology>") -> Topology:
    """Validate an already-parsed TOML document."""
    v = _Validator()
    v.unknown(data, _TOP_KEYS, "top level")
    name = v.string(data, "name", "top level", default=Path(source).stem)
    description = v.string(data, "description", "top level", default="")
    routing = v.string(data, "routing", "top level", default="direct")
    if routing not in ("direct", "overlay", "star"):
        v.err(f"routing = {routing!r}: must be 'direct', 'overlay' or 'star'")
    star_hub = v.string(data, "hub", "top level", default="") or None

    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        v.err("[defaults] must be a table")
        defaults = {}
    v.unknown(defaults, _DEFAULT_KEYS, "[defaults]")
    d_lan = v.number(defaults, "lan_rate_mbps", "[defaults]", 1000.0, positive=True)
    d_wan = v.number(defaults, "wan_rate_mbps", "[defaults]", 100.0, positive=True)
    d_burst = v.integer(defaults, "burst_bytes", "[defaults]", 0, minimum=0)
    queue_limit = v.integer(defaults, "queue_limit_bytes", "[defaults]", 16 << 20, minimum=1)
    chunk = v.integer(defaults, "chunk_bytes", "[defaults]", 64 * 1024, minimum=512)
    d_machine = v.number(defaults, "machine_usd_per_hour", "[defaults]", 0.8, minimum=0.0)
    d_egress = v.number(defaults, "egress_usd_per_gb", "[defaults]", 0.02, minimum=0.0)
    d_workers = v.integer(defaults, "workers", "[defaults]", 1, minimum=0)
    d_shards = v.integer(defaults, "ps_shards", "[defaults]", 1, minimum=0)
    d_host = v.string(defaults, "host", "[defaults]", default="127.0.0.1")
    base_port = v.integer(defaults, "base_port", "[defaults]", 5600, minimum=1, maximum=65000)
    d_lan_lat = v.number(defaults, "lan_latency_ms", "[defaults]", 0.0, minimum=0.0)
    d_speed = v.number(defaults, "speed", "[defaults]", 1.0, positive=True)

    raw_regions = data.get("regions", [])
    if not isinstance(raw_regions, list) or not raw_regions:
        v.err("[[regions]]: at least one region is required")
        raw_regions = []
    regions: list[Region] = []
    seen: set[str] = set()
    ports: dict[tuple[str, int], str] = {}
    for i, rr in enumerate(raw_regions):
        where = f"regions[{i}]"
        if not isinstance(rr, dict):
            v.err(f"{where} must be a table")
            continue
        v.unknown(rr, _REGION_KEYS, where)
        rname = v.string(rr, "name", where)
        if rname:
            where = f"region {rname!r}"
            if not is_valid_region_name(rname):
                v.err(f"{where}: name must be letters, digits, '_' or '-', starting with a "
                      "letter, at most 32 characters")
            if rname in seen:
                v.err(f"{where}: duplicate region name")
            seen.add(rname)
        lat = v.number(rr, "lat", where, 0.0, minimum=-90.0, maximum=90.0)
        lon = v.number(rr, "lon", where, 0.0, minimum=-180.0, maximum=180.0)
        port = v.integer(rr, "port", where, base_port + 2 * i, minimum=1, maximum=65535)
        tap_port = v.integer(rr, "tap_port", where, port + 1, minimum=1, maximum=65535)
        host = v.string(rr, "host", where, default=d_host)
        for p in (port, tap_port):
            other = ports.get((host, p))
            if other is not None:
                v.err(f"{where}: port {p} on {host} is already used by region {other!r}")
            ports[(host, p)] = rname or where
        regions.append(Region(
            name=rname or f"?{i}",
            lat=lat,
            lon=lon,
            machine_usd_per_hour=v.number(rr, "machine_usd_per_hour", where, d_machine,
                                          minimum=0.0),
            egress_usd_per_gb=v.number(rr, "egress_usd_per_gb", where, d_egress, minimum=0.0),
            sovereign=v.boolean(rr, "sovereign", where, False),
            workers=v.integer(rr, "workers", where, d_workers, minimum=0),
            ps_shards=v.integer(rr, "ps_shards", where, d_shards, minimum=0),
            host=host,
            port=port,
            tap_port=tap_port,
            lan_rate_mbps=v.number(rr, "lan_rate_mbps", where, d_lan, positive=True),
            lan_latency_ms=v.number(rr, "lan_latency_ms", where, d_lan_lat, minimum=0.0),
            speed=v.number(rr, "speed", where, d_speed, positive=True),
        ))
    by_name = {r.name: r for r in regions}

    overrides: dict[tuple[str, str], dict[str, Any]] = {}
    raw_links = data.get("links", [])
    if not isinstance(raw_links, list):
        v.err("[[links]] must be an array of tables")
        raw_links = []
    for i, lk in enumerate(raw_links):
        where = f"links[{i}]"
        if not isinstance(lk, dict):
            v.err(f"{where} must be a table")
            continue
        v.unknown(lk, _LINK_KEYS, where)
        pairs: list[tuple[str, str]] = []
        if "between" in lk:
            between = lk["between"]
            if "from" in lk or "to" in lk:
                v.err(f"{where}: give either 'between' or 'from'/'to', not both")
            if (not isinstance(between, list) or len(between) != 2
                    or not all(isinstance(x, str) for x in between)):
                v.err(f"{where}: 'between' must be a list of two region names")
            else:
                a, b = between
                pairs = [(a, b), (b, a)]
                where = f"link {a}<->{b}"
        elif "from" in lk and "to" in lk:
            a, b = lk["from"], lk["to"]
            if not isinstance(a, str) or not isinstance(b, str):
                v.err(f"{where}: 'from' and 'to' must be region names")
            else:
                pairs = [(a, b)]
                where = f"link {a}->{b}"
        else:
            v.err(f"{where}: needs 'between' = [A, B] or 'from' and 'to'")
        fields = {
            "rate_mbps": v.number(lk, "rate_mbps", where, None, positive=True),
            "latency_ms": v.number(lk, "latency_ms", where, None, minimum=0.0),
            "burst_bytes": v.integer(lk, "burst_bytes", where, None, minimum=1),
            "queue_limit_bytes": v.integer(lk, "queue_limit_bytes", where, None, minimum=1),
            "chunk_bytes": v.integer(lk, "chunk_bytes", where, None, minimum=512),
        }
        for a, b in pairs:
            bad = [x for x in (a, b) if x not in by_name]
            if bad:
                v.err(f"{where}: unknown region(s) {', '.join(map(repr, bad))}")
                continue
            if a == b:
                v.err(f"{where}: a link must join two different regions")
                continue
            if (a, b) in overrides:
                v.err(f"{where}: the pair {a}->{b} is given more than once")
            overrides[(a, b)] = {k: val for k, val in fields.items() if val is not None}

    wan: dict[tuple[str, str], LinkSpec] = {}
    for a, b in _wan_pairs(regions, by_name, routing, star_hub, overrides):
        o = overrides.get((a.name, b.name), {})
        rate = o.get("rate_mbps", d_wan) * 1e6
        latency_ms = o.get("latency_ms")
        if latency_ms is None:
            latency_ms = great_circle_km(a.lat, a.lon, b.lat, b.lon) / KM_PER_MS
        link_chunk = o.get("chunk_bytes", chunk)
        burst = o.get("burst_bytes", d_burst) or default_burst(rate, DEFAULT_BURST_S,
                                                                link_chunk)
        wan[(a.name, b.name)] = LinkSpec(
            name=f"{a.name}->{b.name}",
            kind="wan",
            rate_bps=rate,
            latency_s=latency_ms / 1e3,
            burst_bytes=burst,
            queue_limit_bytes=o.get("queue_limit_bytes", queue_limit),
            chunk_bytes=link_chunk,
        )

    groups: list[OverlayGroup] = []
    raw_overlay = data.get("overlay", [])
    if not isinstance(raw_overlay, list):
        v.err("[[overlay]] must be an array of tables")
        raw_overlay = []
    member_of: dict[str, str] = {}
    for i, g in enumerate(raw_overlay):
        where = f"overlay[{i}]"
        if not isinstance(g, dict):
            v.err(f"{where} must be a table")
            continue
        v.unknown(g, _OVERLAY_KEYS, where)
        gname = v.string(g, "name", where, default=f"group{i}")
        where = f"overlay group {gname!r}"
        hub = v.string(g, "hub", where)
        members = g.get("members")
        if not isinstance(members, list) or not members or not all(
            isinstance(m, str) for m in members
        ):
            v.err(f"{where}: 'members' must be a non-empty list of region names")
            members = []
        for m in members:
            if m not in by_name:
                v.err(f"{where}: unknown member region {m!r}")
            elif m in member_of:
                v.err(f"{where}: region {m!r} is already in group {member_of[m]!r}")
            else:
                member_of[m] = gname
        if hub and hub not in members:
            v.err(f"{where}: hub {hub!r} is not one of its members")
        groups.append(OverlayGroup(gname, hub, tuple(members)))
    if routing == "overlay" and not groups:
        v.err("routing = 'overlay' needs at least one [[overlay]] group")
    if routing == "star" and star_hub is None:
        v.err("routing = 'star' needs hub = \"REGION\" (the region all traffic goes through)")
    elif star_hub is not None and routing != "star":
        v.err(f"hub = {star_hub!r} is only meaningful with routing = 'star'")
    elif star_hub is not None and star_hub not in by_name:
        v.err(f"hub = {star_hub!r}: unknown region")

    v.raise_if_any(source)
    return Topology(
        name=name,
        description=description,
        source=source,
        routing=routing,
        regions=tuple(regions),
        wan=wan,
        overlay=tuple(groups),
        burst_s=DEFAULT_BURST_S,
        queue_limit_bytes=queue_limit,
        chunk_bytes=chunk,
        hub=star_hub,
    )


class _Validator:
    """Collects problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def err(self, msg: str) -> None:
        if msg not in self.problems:  # a two-way link reports a bad region once
            self.problems.append(msg)

    def raise_if_any(self, source: str) -> None:
        if self.problems:
            raise TopologyError(source, self.problems)

    def unknown(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                self.err(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")

    def string(self, table: dict[str, Any], key: str, where: str,
               default: str | None = None) -> str:
        if key not in table:
            if default is None:
                self.err(f"{where}: missing '{key}'")
                return ""
            return default
        val = table[key]
        if not isinstance(val, str) or (not val.strip() and default is None):
            self.err(f"{where}: '{key}' must be a non-empty string, got {val!r}")
            return ""
        return val

    def boolean(self, table: dict[str, Any], key: str, where: str, default: bool) -> bool:
        val = table.get(key, default)
        if not isinstance(val, bool):
            self.err(f"{where}: '{key}' must be true or false, got {val!r}")
            return default
        return val

    def number(self, table: dict[str, Any], key: str, where: str, default: Any,
               *, positive: bool = False, minimum: float | None = None,
               maximum: float | None = None) -> Any:
        if key not in table:
            return default
        val = table[key]
        if isinstance(val, bool) or not isinstance(val, int | float) or math.isnan(val):
            self.err(f"{where}: '{key}' must be a number, got {val!r}")
            return default
        if positive and not val > 0:
            self.err(f"{where}: '{key}' must be > 0, got {val}")
            return default
        if minimum is not None and val < minimum:
            self.err(f"{where}: '{key}' must be >= {minimum}, got {val}")
            return default
        if maximum is not None and val > maximum:
            self.err(f"{where}: '{key}' must be <= {maximum}, got {val}")
            return default
        return float(val)

    def integer(self, table: dict[str, Any], key: str, where: str, default: Any,
                *, minimum: int | None = None, maximum: int | None = None) -> Any:
        if key not in table:
            return default
        val = table[key]
        if isinstance(val, bool) or not isinstance(val, int):
            self.err(f"{where}: '{key}' must be a whole number, got {val!r}")
            return default
        if minimum is not None and val < minimum:
            self.err(f"{where}: '{key}' must be >= {minimum}, got {val}")
            return default
        if maximum is not None and val > maximum:
            self.err(f"{where}: '{key}' must be <= {maximum}, got {val}")
            return default
        return val
