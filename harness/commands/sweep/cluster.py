"""The sweep's Ray cluster: joining one at an address (checked first), or starting a local instance, and
which device and how many shards at once it offers."""

from __future__ import annotations

import os
import socket

from harness.commands.sweep.plan import SLOT, START_LINE, SweepError


def _named(address: str, source: str) -> str:
    return f"RAY_ADDRESS={address}" if source == "RAY_ADDRESS" else f"--ray {address}"


def check_address(address: str, source: str) -> None:
    """A host:port (or ray://host:port) that nothing answers at is an error naming it, before Ray would retry
    for a minute. `auto` is left to Ray."""
    named = _named(address, source)
    instead = "unset RAY_ADDRESS" if source == "RAY_ADDRESS" else "leave out --ray"
    if address in ("auto", "local"):
        if address == "local":
            raise SweepError(f"{named}: {instead} for a local Ray instance")
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"{named}: not an address of a Ray cluster; expected HOST:PORT of its head "
                         "(e.g. 10.0.0.1:6379, printed by `ray start --head`), ray://HOST:PORT, or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SweepError(f"{named}: no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); start one "
                         f"with `{START_LINE}` on its head node (CPU nodes declare the slot; GPU nodes need "
                         f"nothing more), or {instead} for a local instance") from None


def connect(ray, address: str | None, source: str, runtime_env: dict, num_cpus: int | None) -> str:
    """Join the cluster at `address`, or start a local instance that declares the timing slot. Returns what
    the results record as the address."""
    import logging

    common = {"runtime_env": runtime_env or None, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        check_address(address, source)
        try:
            ray.init(address=address, **common)
        except Exception as exc:  # noqa: BLE001 - whatever Ray raises, it names the address and why
            raise SweepError(f"{_named(address, source)}: cannot join a Ray cluster there: {type(exc).__name__}: "
                             f"{first_line(exc)} (a cluster with token authentication, Ray's default where "
                             "~/.ray/auth_token exists, needs RAY_AUTH_MODE=token and the token here too)") from None
        return address
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), resources={SLOT: 1}, include_dashboard=False,
             **common)
    return "local"


def cluster_device(ray, asked: str, address: str) -> tuple[str, dict, int]:
    """The sweep's device (auto: cuda when the cluster has GPUs), the Ray options of each task, and how many
    shards can run at once."""
    resources = ray.cluster_resources()
    gpus, slots = int(resources.get("GPU", 0)), int(resources.get(SLOT, 0))
    if asked not in ("auto", "cpu", "cuda"):
        raise SweepError(f"--lstm-device: unknown device {asked!r}; choose from auto, cpu, cuda")
    device = ("cuda" if gpus else "cpu") if asked == "auto" else asked
    if device == "cuda":
        if not gpus:
            raise SweepError(f"--lstm-device cuda: the Ray cluster ({address}) has no GPU")
        return device, {"num_gpus": 1, "num_cpus": 1}, gpus
    if not slots:
        raise SweepError(f"the Ray cluster ({address}) declares no {SLOT!r} resource, which keeps two timed CPU "
                         f"shards off one machine: start each CPU node with `{START_LINE}` (a worker: "
                         f"`ray start --address HEAD:6379 --resources='{{\"{SLOT}\": 1}}'`)")
    return device, {"num_cpus": 1, "resources": {SLOT: 1}}, slots


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2])[:400] if lines else type(exc).__name__
