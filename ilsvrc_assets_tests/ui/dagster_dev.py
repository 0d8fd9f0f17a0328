"""``dagster dev`` for a test: started on loopback in a process group of its own, spoken to over
the webserver's GraphQL API, and stopped with every process it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import ilsvrc_assets
from ilsvrc_assets.cli import DAGSTER_YAML, dagster_dev_command

PROJECT_ROOT = Path(ilsvrc_assets.__file__).resolve().parents[1]


class GraphQLError(RuntimeError):
    """The webserver answered a query with errors."""


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_group_members(pgid: int) -> list[str]:
    """``pid command`` of every live (not zombie) process in group ``pgid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended while we looked
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            found.append(f"{entry.name} {cmdline.strip()[:160]}")
    return found


class DagsterDev:
    """One ``dagster dev`` (webserver, daemon, code server) serving the ilsvrc_assets code location.

    ``env`` is added to this process's environment; ``home`` becomes DAGSTER_HOME (created with a
    dagster.yaml that disables telemetry). Use as a context manager: leaving it ends every process
    of the group, also when the body failed.
    """

    def __init__(self, home: Path, env: Mapping[str, str], log: Path, startup_timeout: float = 180) -> None:
        self.home = home
        self.env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
        self.log = log
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(DAGSTER_YAML)
        command = [*dagster_dev_command("127.0.0.1", self.port), "-d", str(PROJECT_ROOT)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.home,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # webserver, daemon, code servers and runs share its group
            )
        try:
            self._wait_until_loaded()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _wait_until_loaded(self) -> None:
        """Until the webserver answers and the code location has loaded (or failed to)."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dagster dev exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                workspace = self.graphql(
                    """{ workspaceOrError { ... on Workspace { locationEntries {
                        name loadStatus
                        locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
                )["workspaceOrError"]
            except (urllib.error.URLError, ConnectionError):
                workspace = None
            entries = (workspace or {}).get("locationEntries") or []
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                errors = [
                    f"{entry['name']}: {entry['locationOrLoadError'].get('message')}"
                    for entry in entries
                    if entry["locationOrLoadError"]["__typename"] != "RepositoryLocation"
                ]
                if errors:
                    raise RuntimeError("the code location failed to load: " + "; ".join(errors))
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"dagster dev did not serve the code location within {self.startup_timeout:.0f} s:\n"
                    + self.log_tail()
                )
            time.sleep(0.5)

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        """The ``data`` of one GraphQL request to the webserver; GraphQLError if it has errors."""
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.load(response)
        if reply.get("errors"):
            raise GraphQLError("; ".join(error.get("message", str(error)) for error in reply["errors"]))
        return reply["data"]

    def stop(self, grace: float = 15) -> None:
        """End the whole process group: Ctrl-C for ``dagster dev`` (which stops its webserver and
        daemon), then SIGKILL for whatever is left; raise if anything survives."""
        pgid = self.process.pid  # the session leader's pid is the group's id
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + grace
        while (left := process_group_members(pgid)) and time.monotonic() < deadline:
            try:
                os.killpg(pgid, signal.SIGKILL)  # code servers, run workers, their pools
            except ProcessLookupError:
                pass
            time.sleep(0.2)
        self.process.wait()
        if left:
            raise RuntimeError("processes of dagster dev survived SIGKILL:\n" + "\n".join(left))
