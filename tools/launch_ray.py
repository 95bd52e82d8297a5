"""`geoml launch --engine ray`: every router and role of a run as its own process, each
hosted by a Ray actor on a node that carries the process's region.

A node carries a region through a Ray resource: `ray start --resources
'{"geoml_region_east": 1}'`. Each process's actor asks for a sliver of its region's
resource (and no CPU), so Ray places it on such a node. The launcher is `geoml launch`'s,
with three things done differently:
- a router binds on its node's own address (`--host`), not the topology's;
- what a process needs from the driver goes through Ray, not a shared disk: the endpoints
  file, the topology file, the public keys and the one secret key the process uses, written
  by its actor into a private directory of its node (ray_host.ProcessHost);
- the shards' final models come back to the driver through their actors, so the driver
  writes the same summary.json as `geoml launch` and `geoml run`.

A crashed process of a restartable kind takes its actor down with it, and Ray's actor
restart (max_restarts = --restarts) starts the next one on a node of the same region, with
--resume (a router: on its ports, from the endpoints the run's registry actor holds); then
geoml's recovery protocol takes over as under `geoml launch`. Checkpoints stay on the
node, under the run's out directory (`OUT/checkpoints`, an absolute path every node of the
run can write). `geoml inspect --endpoints OUT/endpoints.json` watches the routers at the
nodes' addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geoml.bus import GeomlError, Topology

from .launch import Launcher
from .launch_child import Child, LaunchFailed, process_region
from .launch_config import LaunchConfig
from .ray_host import ENDPOINTS, NODE_HOST, host_class, registry_class

RESOURCE_PREFIX = "geoml_region_"
#: How much of its region's resource one process's actor asks for: any node that carries
#: the region (resource 1) hosts up to 1000 of them.
_SLIVER = 0.001
_POLL_S = 0.05


def region_resource(region: str) -> str:
    """The Ray resource a node carries to host `region`'s processes."""
    return RESOURCE_PREFIX + region


def import_ray() -> Any:
    """Ray, or a GeomlError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise GeomlError("--engine ray needs Ray: pip install 'geoml[ray]' (or pip install "
                         "ray)") from None
    return ray


def connect(address: str | None) -> Any:
    """Ray, connected to the cluster at `address` ('auto': the one this machine is in)."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except ConnectionError as exc:
            raise GeomlError(f"--address {address}: no Ray cluster there ({exc}); start one "
                             "with `ray start --head`") from None
    return ray


def check_regions(ray: Any, topo: Topology) -> None:
    """GeomlError naming every region of `topo` that no alive node of the cluster carries."""
    carried = {r for node in ray.nodes() if node.get("Alive")
               for r in node.get("Resources", {})}
    missing = [r for r in topo.region_names if region_resource(r) not in carried]
    if missing:
        flags = ", ".join(f'"{region_resource(r)}": 1' for r in missing)
        raise GeomlError(f"no Ray node carries region(s) {', '.join(missing)}; start a node "
                         f"for each with ray start --resources '{{{flags}}}'")


class RayProcess:
    """A process hosted by a Ray actor, as the launcher sees a local one: pid, returncode,
    stdout and stderr streams, signals, wait."""

    def __init__(self, actor: Any, where: dict[str, Any]) -> None:
        self.actor = actor
        self.where = where
        self.pid: int = where["pid"]
        self.returncode: int | None = None
        self.stdout = asyncio.StreamReader()
        self.stderr = asyncio.StreamReader()
        self.stdin = None
        self._exited = asyncio.Event()
        self._pump = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        n_out = n_err = 0
        try:
            while True:
                out, err, code = await self.actor.read.remote(n_out, n_err)
                n_out, n_err = n_out + len(out), n_err + len(err)
                for stream, lines in ((self.stdout, out), (self.stderr, err)):
                    if lines:
                        stream.feed_data("".join(lines).encode())
                if code is not None:
                    self.returncode = code
                    return
                await asyncio.sleep(_POLL_S)
        except Exception as exc:  # the actor died with its process (a node lost, ray.kill)
            self.stderr.feed_data(f"[ray] its actor died: {exc}\n".encode())
            self.returncode = -9
        finally:
            self.stdout.feed_eof()
            self.stderr.feed_eof()
            self._exited.set()

    def send_signal(self, signum: int) -> None:
        """Signal the process through its actor (if the process still runs)."""
        if self.returncode is None:
            self.actor.signal.remote(int(signum))

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def fetch(self, path: str) -> bytes:
        """A file the process wrote on its node."""
        return bytes(await self.actor.fetch.remote(path))


class RayLauncher(Launcher):
    """`geoml launch`'s launcher, each process hosted by a Ray actor placed by region."""

    def __init__(self, cfg: LaunchConfig, topo: Topology, plan: Any, ray: Any) -> None:
        super().__init__(cfg, topo, plan)
        self.ray = ray
        self.actors: list[Any] = []
        self._actor_of: dict[str, tuple[Any, int]] = {}  # name -> its actor, the last pid
        self.registry = registry_class().remote()

    def router_args(self, region: str) -> list[str]:
        return [*super().router_args(region), "--host", NODE_HOST]

    def _files(self, name: str, kind: str, args: list[str]) -> dict[str, bytes]:
        """What the process needs from the driver: the files its arguments name, and of the
        keys only the public ones and its own secret."""
        files: dict[str, bytes] = {}
        for flag in ("--endpoints", "--topology"):
            if flag in args and Path(path := args[args.index(flag) + 1]).is_file():
                files[path] = Path(path).read_bytes()
        if "--keys" in args:
            keys = args[args.index("--keys") + 1]
            for f in sorted((Path(keys) / "public").iterdir()):
                files[f"{keys}::public/{f.name}"] = f.read_bytes()
            region = process_region(name, kind)
            own = "router" if kind == "router" else name.split("/")[1]
            secret = Path(keys) / "secret" / f"{region}.{own}.key_secret"
            files[f"{keys}::secret/{secret.name}"] = secret.read_bytes()
        return files

    async def start_process(self, name: str, kind: str, args: list[str],
                            stdin: bool) -> Any:
        """A new actor for the process; for a restart, the same actor once Ray has
        restarted it with its next process."""
        if name in self._actor_of:
            return await self._restarted(name, *self._actor_of[name])
        region = process_region(name, kind)
        restarts = self.cfg.restarts if self.cfg.restartable(kind) else 0
        restart_args = None
        if restarts:
            restart_args = ([*self.router_args(region), "--endpoints", ENDPOINTS]
                            if kind == "router" else [*args, "--resume"])
        actor = host_class().options(
            resources={region_resource(region): _SLIVER}, max_restarts=restarts).remote(
                args, self._files(name, kind, args), stdin, restart_args, self.registry)
        self.actors.append(actor)
        try:
            where = await asyncio.wait_for(actor.where.remote(), self.cfg.start_timeout)
        except TimeoutError:
            raise GeomlError(f"{name}: Ray placed no actor for it within "
                             f"{self.cfg.start_timeout:.0f}s (is a node of region {region} "
                             "alive and free?)") from None
        self._actor_of[name] = (actor, where["pid"])
        return RayProcess(actor, where)

    async def _restarted(self, name: str, actor: Any, old_pid: int) -> RayProcess:
        """Wait for Ray to restart `actor` (max_restarts) with a new process."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.start_timeout
        while loop.time() < deadline:
            with contextlib.suppress(Exception):  # while Ray restarts the actor
                where = await asyncio.wait_for(actor.where.remote(), 5)
                if where["pid"] != old_pid:
                    self._actor_of[name] = (actor, where["pid"])
                    return RayProcess(actor, where)
            await asyncio.sleep(0.1)
        raise LaunchFailed(f"{name}: Ray did not restart its actor within "
                           f"{self.cfg.start_timeout:.0f}s")

    async def hand_endpoints(self, child: Child, path: Path) -> None:
        endpoints = path.read_bytes()
        await self.registry.put.remote(endpoints)  # for a router Ray restarts
        await child.proc.actor.write.remote(f"{path}\n", {str(path): endpoints})

    async def collect(self, reports: dict[str, dict[str, Any]]) -> None:
        """The shards' final models, from their nodes into the driver's out directory."""
        for child in self.roles():
            wrote = reports.get(child.name, {}).get("wrote")
            if wrote is not None:
                data = await child.proc.fetch(wrote)
                Path(wrote).parent.mkdir(parents=True, exist_ok=True)
                Path(wrote).write_bytes(data)

    def summary_fields(self) -> dict[str, Any]:
        """Where every process ran, and whether each ran on a node carrying its region."""
        placement = {c.key: {"region": c.region, **c.proc.where} for c in self.children}
        return {"engine": "ray", "placement": placement,
                "placement_ok": all(region_resource(p["region"]) in p["resources"]
                                    for p in placement.values())}

    async def stop_all(self) -> None:
        await super().stop_all()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(actor.close.remote(), 10)
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        with contextlib.suppress(Exception):
            self.ray.kill(self.registry)


def ray_launcher(address: str) -> Callable[[LaunchConfig, Topology, Any], RayLauncher]:
    """What `launch` makes its launcher with under `--engine ray`: connected to the cluster
    at `address`, once every region has a node to run on."""
    def make(cfg: LaunchConfig, topo: Topology, plan: Any) -> RayLauncher:
        ray = connect(address)
        check_regions(ray, topo)
        cfg.out = cfg.out.resolve()  # the nodes write checkpoints and models under it
        return RayLauncher(cfg, topo, plan, ray)

    return make
