"""Composition root: settings → registry → servicers → a running gRPC server.

``PreimageServer`` is the server as an object (start, drain, stop) on the
current asyncio loop; ``start_server`` runs one on a background thread for
tests and embedding; ``run`` is what ``preimage serve`` calls.

Example:
    >>> from preimage.server.app import start_server
    >>> from preimage.server.settings import Settings, device_problem
    >>> server = start_server(Settings(registry_dir="/tmp/reg", address="127.0.0.1:0"))  # doctest: +SKIP
    >>> server.port  # doctest: +SKIP
    40123
    >>> server.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys
import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from preimage.oip import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from preimage.server.auth import TokenAuthInterceptor
from preimage.server.inference_service import InferenceServicer
from preimage.server.metrics import Metrics
from preimage.server.oip_service import OipServicer
from preimage.server.registry_service import RegistryServicer
from preimage.server.runtime import Runtime
from preimage.server.settings import Settings, device_problem
from preimage.v1 import inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc

__all__ = ["SERVICE_NAMES", "PreimageServer", "RunningServer", "run", "start_server"]

SERVICE_NAMES = (
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)
REGISTRY_CHECK_SECONDS = 5.0
SHARED_CHECK_SECONDS = 2.0
"""With a shared index and blob store: how often both are checked for health (a database is likelier to go away)."""
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
log = logging.getLogger("preimage.server")


class PreimageServer:
    """One configured server on the running asyncio loop.

    The port is bound at construction; :meth:`start` begins serving with health
    NOT_SERVING, opens the registry, then reports SERVING.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.runtime = Runtime(settings, self.metrics)
        self.health = health.aio.HealthServicer()
        self.serving = False
        interceptors = []
        if settings.auth_enabled:
            interceptors.append(TokenAuthInterceptor(settings.admin_tokens, settings.read_tokens))
        limit = settings.max_message_bytes
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(self.runtime), self.server)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(self.runtime), self.server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            OipServicer(self.runtime, ready=lambda: self.serving), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
                self.server,
            )
        self.port = self._bind()
        host = settings.address.rpartition(":")[0]
        self.address = f"{host}:{self.port}"
        self._registry: Any = None
        self._watcher: Any = None
        self._metrics_http: Any = None
        self._monitor: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None

    def _bind(self) -> int:
        settings = self.settings
        if settings.tls_enabled:
            assert settings.tls_cert is not None and settings.tls_key is not None
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
                root_certificates=settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None,
                require_client_auth=settings.tls_client_ca is not None,
            )
            port = self.server.add_secure_port(settings.address, credentials)
        else:
            port = self.server.add_insecure_port(settings.address)
        if port == 0:
            raise OSError(f"could not bind {settings.address}")
        if not _is_loopback(settings.address.rpartition(":")[0]) and not (
            settings.tls_enabled and settings.auth_enabled
        ):
            log.warning(
                "listening on non-loopback address %s without %s: anyone who can reach it can use this server",
                settings.address,
                " and ".join(
                    w for w, on in (("TLS", settings.tls_enabled), ("tokens", settings.auth_enabled)) if not on
                ),
            )
        return port

    async def _set_health(self, status: int) -> None:
        self.serving = status == _SERVING
        for service in ("", *SERVICE_NAMES):
            await self.health.set(service, status)

    async def start(self) -> None:
        """Serve: NOT_SERVING while the registry opens, SERVING after."""
        from preimage.registry import Registry

        settings = self.settings
        if settings.device != "cpu" and (problem := device_problem(settings.device)):
            raise ValueError(problem)
        await self._set_health(_NOT_SERVING)
        await self.server.start()
        await self.runtime.run(_set_torch_threads, settings.torch_threads)  # imports torch: off the loop
        # Again on the loop's own thread, which runs lone cheap Predicts (Runtime.predict): OpenMP's
        # thread count is per thread, and a team left at the default keeps a second thread spinning
        # on a core after every pass.
        _set_torch_threads(settings.torch_threads)
        self._registry = await self.runtime.run(
            Registry.open,
            settings.registry_dir,
            max_model_bytes=settings.max_model_bytes,
            cache_size=settings.cache_size,
            index_url=settings.index,
            blobs_url=settings.blobs,
        )
        if settings.index is not None:
            self._registry.cache_lookups(2 * settings.index_poll_seconds)
        self.runtime.set_registry(self._registry)
        if settings.watch_dir is not None:
            from preimage.registry.watch import FolderWatcher

            self._watcher = FolderWatcher(
                self._registry, settings.watch_dir, interval_seconds=settings.watch_interval_seconds
            )
            self._watcher.start()
        if settings.metrics_address:
            self._metrics_http = self.metrics.serve_http(settings.metrics_address)
        await self._set_health(_SERVING)
        self._monitor = asyncio.create_task(self._watch_registry())
        if settings.index is not None:
            self._follower = asyncio.create_task(self._follow_index())
        log.info("preimage serving on %s, registry %s", self.address, self._registry.description)

    async def _watch_registry(self) -> None:
        """Report NOT_SERVING while the registry cannot be read, SERVING again when it can."""
        serving = True
        interval = REGISTRY_CHECK_SECONDS if self.settings.index is None else SHARED_CHECK_SECONDS
        while True:
            await asyncio.sleep(interval)
            try:
                await self.runtime.run(self._registry.check_readable)
                healthy = True
            except Exception as exc:  # any failure to read the index means: do not route traffic here
                healthy = False
                if serving:
                    log.error("registry unreadable, reporting NOT_SERVING: %s", exc)
            if healthy != serving:
                serving = healthy
                if healthy:
                    log.info("registry readable again, reporting SERVING")
                await self._set_health(_SERVING if healthy else _NOT_SERVING)

    async def _follow_index(self) -> None:
        """Pick up other replicas' changes: the generation counter moved -> drop modules of deleted blobs."""
        while True:
            await asyncio.sleep(self.settings.index_poll_seconds)
            try:
                await self.runtime.run(self._registry.refresh)
            except Exception as exc:  # the health monitor reports an unreachable index; keep following
                log.debug("could not poll the shared index: %s", exc)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight calls run up to ``grace`` seconds, cancel the rest."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.serving = False
        await self.health.enter_graceful_shutdown()
        for task in (self._monitor, self._follower):
            if task is not None:
                task.cancel()
        await self.server.stop(grace)
        self.runtime.close()
        if self._watcher is not None:
            self._watcher.stop()
        # Cancelled streams have set their stop events; wait for the worker threads to see them.
        await asyncio.get_running_loop().run_in_executor(None, self.runtime.executor.shutdown, True)
        if self._registry is not None:
            self._registry.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        log.info("preimage stopped")

    async def wait(self) -> None:
        """Until the gRPC server terminates."""
        await self.server.wait_for_termination()


class RunningServer:
    """A :class:`PreimageServer` on its own event-loop thread (tests, embedding)."""

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: PreimageServer | None = None
        self._thread = threading.Thread(target=self._main, args=(settings,), name="preimage-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self, settings: Settings) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = PreimageServer(settings)
            self._loop.run_until_complete(self._server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    @property
    def server(self) -> PreimageServer:
        """The server object."""
        assert self._server is not None
        return self._server

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    @property
    def address(self) -> str:
        """``HOST:PORT`` with the bound port."""
        return self.server.address

    def stop(self, grace: float | None = 0.0) -> None:
        """Drain and stop, then end the loop thread."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop)
        future.result(timeout=(grace or 0) + 60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(settings: Settings) -> RunningServer:
    """Start a server on a background thread; returns once it reports SERVING."""
    return RunningServer(settings)


def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then drain gracefully. Returns the exit status (0).

    The process is the server's: this also sets its interpreter switch interval
    (``Settings.switch_interval_ms``).
    """
    sys.setswitchinterval(settings.switch_interval_ms / 1000)

    async def main() -> None:
        server = PreimageServer(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        print(f"preimage serving on {server.address} (registry {settings.registry_dir})", flush=True)
        await stop.wait()
        log.info("shutting down: draining for up to %s s", settings.shutdown_grace_seconds)
        await server.stop()

    asyncio.run(main())
    return 0


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
