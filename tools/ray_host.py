"""The Ray actors of a `geoml launch --engine ray` run: one hosts each process, one holds
the run's registry.

A host runs on a node Ray picked for its process's region, writes what the process needs
(its own secret key, the public keys, the endpoints file) into a private directory of that
node (mode 0700, removed when the actor goes), and starts `geoml ARGS` there with those
paths put in. The driver reads the process's output through `read` and signals it through
`signal`. Ray is imported only inside functions and methods, so geoml imports without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from .launch_child import child_options, geoml_command

#: The placeholder in a router's arguments for the address of the node it runs on.
NODE_HOST = "@NODE_HOST@"
#: The placeholder in a restarted router's arguments for the run's endpoints file.
ENDPOINTS = "@ENDPOINTS@"


class ProcessHost:
    """One `geoml` process on this node, its output kept for the driver to read.

    `restart_args`: what the process runs when Ray has restarted this actor (a role with
    --resume; a router on its ports, from the endpoints the `registry` actor holds, put in
    for ENDPOINTS). With `restart_args`, a process that dies without being told to (by
    `signal`) takes its actor down once the driver has seen it die, and Ray's actor restart
    (max_restarts) starts the next one on a node of the same region.
    """

    def __init__(self, args: list[str], files: dict[str, bytes], stdin: bool,
                 restart_args: list[str] | None = None, registry: Any = None) -> None:
        import ray

        # One directory per actor: a process of it Ray restarts after a crash clears what
        # the one before left (its secret key included) before it writes its own.
        context = ray.get_runtime_context()
        self.private = Path(tempfile.gettempdir()) / f"geoml-{context.get_actor_id()}"
        shutil.rmtree(self.private, ignore_errors=True)
        self.private.mkdir(mode=0o700)
        self._written = 0
        local = self._write(files)
        self.restarted = context.was_current_actor_reconstructed
        if self.restarted and restart_args is not None:
            args, stdin = restart_args, False
            if ENDPOINTS in args:
                endpoints = ray.get(registry.endpoints.remote(), timeout=60)
                local.update(self._write({ENDPOINTS: endpoints}))
        host = _node_host()
        self.args = [local.get(a, a).replace(NODE_HOST, host) for a in args]
        self.proc = subprocess.Popen(
            geoml_command(self.args), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **child_options())
        self.out: list[str] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._told = False  # the driver signalled the process: its end is not a crash
        self._exit_seen = threading.Event()  # the driver has read the exit code
        self._readers = [threading.Thread(target=self._pump, args=(s, into), daemon=True)
                         for s, into in ((self.proc.stdout, self.out),
                                         (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()
        if restart_args is not None:
            threading.Thread(target=self._die_with_process, daemon=True).start()

    def _die_with_process(self) -> None:
        code = self.proc.wait()
        if code == 0 or self._told:
            return
        self._exit_seen.wait(timeout=10)
        shutil.rmtree(self.private, ignore_errors=True)
        os._exit(1)  # an unexpected exit: Ray restarts the actor (max_restarts)

    def _write(self, files: dict[str, bytes]) -> dict[str, str]:
        """Write `files` ({driver path: content}; a path under a directory stands for that
        directory) into the private directory; returns {driver path: local path} for the
        files and for the directories they were in."""
        local: dict[str, str] = {}
        for path, data in files.items():
            parts = path.split("::", 1)  # "DIR::relative/file": a file in a shipped dir
            if len(parts) == 2:
                if parts[0] not in local:
                    local[parts[0]] = str(self._fresh_dir())
                target = Path(local[parts[0]]) / parts[1]
            else:
                target = self._fresh_dir() / Path(path).name
                local[path] = str(target)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            target.write_bytes(data)
            target.chmod(0o600)
        return local

    def _fresh_dir(self) -> Path:
        self._written += 1
        return self.private / str(self._written)

    def _pump(self, stream: Any, into: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                into.append(raw.decode(errors="replace"))

    def where(self) -> dict[str, Any]:
        """The node this process runs on (Ray's node id, its address, its resources), and
        its actor (whether Ray restarted it)."""
        import ray

        context = ray.get_runtime_context()
        node_id = context.get_node_id()
        resources = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id), {})
        return {"node_id": node_id, "host": _node_host(), "pid": self.proc.pid,
                "resources": sorted(resources), "actor_id": context.get_actor_id(),
                "actor_restarted": self.restarted, "private_dir": str(self.private),
                "secret_keys": sorted(f.name.removesuffix(".key_secret")
                                      for f in self.private.glob("*/secret/*.key_secret"))}

    def read(self, out_from: int, err_from: int) -> tuple[list[str], list[str], int | None]:
        """Output lines from these offsets, and the exit code once all output is read."""
        code = self.proc.poll()
        if code is not None:
            for t in self._readers:
                t.join(timeout=5)
        with self._lock:
            out, err = self.out[out_from:], self.err[err_from:]
        if code is not None:
            self._exit_seen.set()
        return out, err, code

    def write(self, text: str, shipped: dict[str, bytes] | None = None) -> None:
        """A line on the process's stdin; paths of `shipped` files are written here first
        and put in."""
        local = self._write(shipped or {})
        for path, mine in local.items():
            text = text.replace(path, mine)
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def fetch(self, path: str) -> bytes:
        """A file the process wrote (its shard's final model)."""
        return Path(path).read_bytes()

    def signal(self, signum: int) -> None:
        """Send `signum` to the process (nothing if it has exited); its end is then no
        crash."""
        self._told = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def close(self) -> None:
        """Kill the process if it still runs; remove the private directory."""
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.private, ignore_errors=True)


def _node_host() -> str:
    import ray

    return str(ray.util.get_node_ip_address())


_HOST_CLASS: Any = None


def host_class() -> Any:
    """ProcessHost as a Ray actor class (made once; needs Ray)."""
    global _HOST_CLASS
    if _HOST_CLASS is None:
        import ray

        _HOST_CLASS = ray.remote(num_cpus=0)(ProcessHost)
    return _HOST_CLASS


class Registry:
    """The run's registry (a Ray actor): where every router listens, for a router Ray
    restarts."""

    def __init__(self) -> None:
        self._endpoints = b""

    def put(self, endpoints: bytes) -> None:
        self._endpoints = endpoints

    def endpoints(self) -> bytes:
        return self._endpoints


def registry_class() -> Any:
    """Registry as a Ray actor class (needs Ray)."""
    import ray

    return ray.remote(num_cpus=0)(Registry)
