"""The edge door: the long-running process of the ``com.modelship.Inference`` Greengrass component.

``python -m edge_greengrass --host H --port P --work DIR --model NAME=ARTIFACT_DIR ...`` builds a store
view of the model components' artifacts (``store_view``), imports the Lambda handler module
``inference.app`` over it, and serves it behind the local HTTP door, as ``modelship serve`` does; under a
nucleus it also bridges local pub/sub requests and applies configuration updates in place (``ipc``).

It makes no network call and needs no AWS credentials, unless the cloud fallback is configured
(``cloud_fallback``): then a request for a model the device does not hold goes to the cloud endpoint,
signed with the token exchange service's credentials or carrying an API key.

The nucleus gives a component 5 s between SIGTERM and SIGKILL, so the shutdown is bounded well inside
that: stop accepting, a short grace for requests in flight, then the runs still inside onnxruntime are
cancelled (they answer 503).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from modelship import __version__
from modelship.core.identity import SERVICE_NAME
from modelship.core.service import InferenceService
from modelship.core.settings import PRELOAD_ENV, STORE_ENV
from modelship.doors.local_http import LambdaHandler, Limits, LocalServer

from edge_greengrass.cloud_fallback import CloudForwarder, HybridHandler
from edge_greengrass.ipc import (
    IPC_OFF_MESSAGE,
    IpcBridge,
    IpcClient,
    IpcClientFactory,
    MetricsPublisher,
    close_client,
    describe_error,
    nucleus_available,
    read_configuration,
    report_errored,
)
from edge_greengrass.settings import (
    CLOUD_ENVIRONMENT,
    DEFAULT_CONFIGURATION,
    MAX_REQUEST_BYTES_KEY,
    MAX_WORKER_THREADS,
    PORT_KEY,
    WORKER_THREADS_KEY,
    CloudSettings,
    EdgeConfigurationError,
    EdgeSettings,
    offline_trusted_keys_from_env,
    parse_cloud_configuration,
    parse_configuration,
    parse_whole_number,
)
from edge_greengrass.store_view import ModelSource, StoreView, build_store_view, parse_model_source

logger = logging.getLogger("edge_greengrass")

# Inside the nucleus's 5 s from SIGTERM to SIGKILL: the grace, then after the cancel the workers' time
# to answer, then (only if some are still stuck) LocalServer.drain's last second.
SHUTDOWN_GRACE_SECONDS: Final = 2.0
SHUTDOWN_FINISH_SECONDS: Final = 0.5
IPC_FINISH_SECONDS: Final = 0.3
# A publication of the figures still under way at shutdown: the process's end takes its daemon thread.
METRICS_STOP_SECONDS: Final = 0.2
# Set by the nucleus for every component: the figures name the device they come from.
THING_NAME_ENV: Final = "AWS_IOT_THING_NAME"
WORK_LOCK_FILE: Final = ".lock"

# (handler, service): the Lambda handler to run and the InferenceService behind it.
HandlerLoader = Callable[[], tuple[LambdaHandler, InferenceService]]


def load_lambda_handler() -> tuple[LambdaHandler, InferenceService]:
    """The real Lambda entry, imported once its environment (the store view) is set."""
    import inference.app

    return inference.app.handler, inference.app.service


def prepare_environment(environ: MutableMapping[str, str], store: Path) -> None:
    """What ``inference.app`` reads at import: the store view, and quiet Powertools."""
    environ[STORE_ENV] = str(store)
    # The door preloads in the background once it listens; an import-time preload would delay that.
    environ[PRELOAD_ENV] = ""
    environ.setdefault("POWERTOOLS_SERVICE_NAME", f"{SERVICE_NAME}-edge")
    # No CloudWatch agent reads the device's stdout: EMF lines would only fill the component's log.
    environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")


@dataclasses.dataclass(frozen=True, slots=True)
class DoorOptions:
    work: Path
    models: tuple[ModelSource, ...]
    settings: EdgeSettings


class EdgeDoor:
    """One run of the door. ``start`` does everything but serving and returns an exit code (0: ready to
    serve); ``serve`` blocks until ``shutdown`` and returns the process's exit code."""

    def __init__(
        self,
        options: DoorOptions,
        *,
        environ: MutableMapping[str, str] | None = None,
        ipc_factory: IpcClientFactory | None = None,
        load_handler: HandlerLoader = load_lambda_handler,
    ) -> None:
        self.options = options
        self.settings = options.settings
        self.environ: MutableMapping[str, str] = os.environ if environ is None else environ
        self._ipc_factory = ipc_factory
        self._load_handler = load_handler
        self.client: IpcClient | None = None
        self.bridge: IpcBridge | None = None
        self.metrics_publisher: MetricsPublisher | None = None
        self.server: LocalServer | None = None
        self.service: InferenceService | None = None
        self.view: StoreView | None = None
        self.forwarder: CloudForwarder | None = None
        self.abandoned = 0
        self._work_lock: int | None = None
        self._exit_code = 0
        self._stop_requested = threading.Event()

    def start(self) -> int:
        if nucleus_available(self.environ):
            status = self._connect()
            if status:
                return status
        else:
            logger.info(IPC_OFF_MESSAGE)
        try:
            self._lock_work_folder()
            self.view = build_store_view(self.options.work, self.options.models)
        except _WorkFolderBusy as busy:
            return self._cannot_serve(str(busy))
        except OSError as error:
            reason = error.strerror or describe_error(error)
            return self._cannot_serve(f"cannot build the store view in {self.options.work}: {reason}")
        for name, reason in sorted(self.view.refused.items()):
            logger.error("not serving %s: %s", name, reason)
        if not self.view.models:
            return self._cannot_serve("no model can be served: every --model was refused")
        for model in self.view.models:
            logger.info("serving %s version %d from %s", model.name, model.version, model.folder)
        try:
            offline_trusted_keys_from_env(self.environ)
        except EdgeConfigurationError as error:
            return self._cannot_serve(f"cannot check model signatures: {error}")
        prepare_environment(self.environ, self.view.root)
        try:
            handler, service = self._load_handler()
        except Exception:
            logger.exception("cannot import the inference handler")
            return self._cannot_serve("the inference handler could not be loaded")
        self.service = service
        handler = self._with_cloud_fallback(handler, self.view)
        service.settings = dataclasses.replace(
            service.settings,
            preload=tuple((model.name, model.version) for model in self.view.models),
            max_request_bytes=self.settings.max_request_bytes,
        )
        try:
            self.server = LocalServer(
                (self.settings.host, self.settings.port),
                handler,
                self.settings.max_request_bytes,
                Limits(max_connections=self.settings.worker_threads),
                # The cloud fallback's wrapper hides the service: /metrics reads the load times here.
                loaded_models=service.lifecycle.loaded,
            )
        except OSError as error:
            return self._cannot_serve(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {error.strerror or error}"
            )
        # Listening first, like `modelship serve`: readiness reports the models still loading.
        preloader = service.start_preload()
        threading.Thread(
            target=self._watch_preload, args=(preloader,), name="edge-preload-watch", daemon=True
        ).start()
        if self.client is not None:
            self.bridge = IpcBridge(self.client, handler, self.settings, self.apply_settings)
            try:
                self.bridge.start()
            except Exception as error:
                self.server.server_close()
                return self._cannot_serve(f"cannot subscribe over Greengrass IPC: {describe_error(error)}")
            self.metrics_publisher = MetricsPublisher(
                self.client,
                self.server.metrics.snapshot,
                self.settings,
                thing_name=self.environ.get(THING_NAME_ENV),
            )
            self.metrics_publisher.start()
        host, port = self.server.server_address
        logger.info("modelship %s edge door serving on http://%s:%d/v2", __version__, host, port)
        if self._stop_requested.is_set():
            self.server.shutdown()
        return 0

    def cloud_settings(self) -> CloudSettings | None:
        """The cloud fallback's settings, from the environment the recipe's Run step sets from the
        configuration; None when it is off, or (logged) when a value is unusable: then the door serves
        what it holds and nothing goes to the cloud."""
        configured = {
            key: self.environ[name] for key, name in CLOUD_ENVIRONMENT.items() if name in self.environ
        }
        try:
            return parse_cloud_configuration(configured)
        except EdgeConfigurationError as error:
            logger.error("the cloud fallback is off: %s", error)
            return None

    def _with_cloud_fallback(self, handler: LambdaHandler, view: StoreView) -> LambdaHandler:
        cloud = self.cloud_settings()
        if cloud is None:
            return handler
        held: dict[str, frozenset[int]] = {}
        for model in view.models:
            held[model.name] = held.get(model.name, frozenset()) | {model.version}
        forwarder = CloudForwarder(cloud, self.environ)
        logger.info(
            "cloud fallback on: models not held here%s go to %s (auth %s%s)",
            f" and {sorted(cloud.cloud_only_models)}" if cloud.cloud_only_models else "",
            cloud.endpoint,
            cloud.auth,
            f", region {forwarder.region}" if forwarder.region else "",
        )
        for problem in forwarder.problems():
            logger.error("the cloud fallback cannot work: %s; requests for the cloud answer 503", problem)
        self.forwarder = forwarder
        return HybridHandler(handler, held, forwarder)

    def _lock_work_folder(self) -> None:
        """Hold {work}/.lock for the process's life: a second door on the same folder would swap the
        store view from under this one."""
        work = self.options.work
        work.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(work / WORK_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise _WorkFolderBusy(f"another door is serving from {work}; refusing to share it") from None
        except BaseException:
            os.close(descriptor)
            raise
        # Released by the kernel when the process ends, however it ends.
        self._work_lock = descriptor

    def _connect(self) -> int:
        factory = self._ipc_factory
        if factory is None:
            from edge_greengrass.ipc import connect

            factory = connect
        try:
            self.client = factory()
        except Exception as error:
            # Exiting lets the nucleus retry the component; HTTP alone would leave the bridge dead unseen.
            logger.error("cannot connect to the Greengrass nucleus over IPC: %s", describe_error(error))
            return 1
        try:
            configured = read_configuration(self.client)
        except EdgeConfigurationError as error:
            logger.error("ignoring the component's configuration: %s", error)
            return 0
        except Exception as error:
            logger.error("cannot read the component's configuration: %s", describe_error(error))
            return 0
        # host and port come from the command line: the recipe interpolates them, so they are the same.
        self.settings = dataclasses.replace(configured, host=self.settings.host, port=self.settings.port)
        logger.info("Greengrass IPC is on; configuration: %s", self.settings)
        return 0

    def _cannot_serve(self, reason: str) -> int:
        logger.error("%s", reason)
        if self.client is not None:
            report_errored(self.client)
            close_client(self.client)
        return 1

    def _watch_preload(self, preloader: threading.Thread) -> None:
        preloader.join()
        service = self.service
        if service is None or self.view is None or self._stop_requested.is_set():
            return
        if len(service.preload_errors) < len(self.view.models):
            return
        # The door stays up: each model answers its own JSON 503 (a corrupted file says so), health and
        # metadata still answer, and the next deployment replaces the models. Exiting instead would
        # only loop through the nucleus's restarts into BROKEN with nothing served and nothing said.
        logger.error(
            "no model could be loaded; each answers 503 until a deployment replaces it: %s",
            service.preload_errors,
        )

    def apply_settings(self, settings: EdgeSettings) -> None:
        """The HTTP side of a configuration update, in place (the bridge applies its own side)."""
        self.settings = dataclasses.replace(settings, host=self.settings.host, port=self.settings.port)
        if self.server is not None:
            self.server.limit_connections(settings.worker_threads)
            self.server.max_request_bytes = settings.max_request_bytes
        if self.service is not None:
            self.service.settings = dataclasses.replace(
                self.service.settings, max_request_bytes=settings.max_request_bytes
            )
        if self.metrics_publisher is not None:
            self.metrics_publisher.apply(self.settings)

    def shutdown(self) -> None:
        """Ask ``serve`` to stop. Safe from any thread and from a signal handler; a second call cuts the
        grace period short."""
        self._stop_requested.set()
        if self.server is not None:
            self.server.shutdown()

    def serve(self) -> int:
        server = self.server
        if server is None:
            raise RuntimeError("start() must succeed before serve()")
        try:
            server.serve_forever()
            logger.info("shutting down")
            started = time.monotonic()
            self._stop_metrics()
            if self.bridge is not None:
                self.bridge.stop_taking()
            self.abandoned = server.drain(
                SHUTDOWN_GRACE_SECONDS,
                lambda: self._cancel_after_grace(started + SHUTDOWN_GRACE_SECONDS),
                SHUTDOWN_FINISH_SECONDS,
            )
            if self.bridge is not None:
                self.bridge.finish(IPC_FINISH_SECONDS)
            if self.abandoned:
                logger.warning(
                    "%d requests were still running after shutdown; abandoning them", self.abandoned
                )
            logger.info("stopped in %.2f s", time.monotonic() - started)
        finally:
            self._stop_metrics()
            server.server_close()
            if self.client is not None:
                close_client(self.client)
        return self._exit_code

    def _stop_metrics(self) -> None:
        publisher = self.metrics_publisher
        if publisher is None or publisher.stopped:
            return
        if not publisher.stop(METRICS_STOP_SECONDS):
            logger.warning("a publication of the server's figures was still under way at shutdown")

    def _cancel_after_grace(self, deadline: float) -> None:
        # The HTTP grace ends as soon as no connection is busy; IPC requests get the rest of it.
        if self.bridge is not None:
            self.bridge.wait_idle(max(0.0, deadline - time.monotonic()))
        if self.service is not None:
            cancelled = self.service.cancel_runs()
            if cancelled:
                logger.warning("cancelled %d inference runs still in onnxruntime", cancelled)


def _whole_number(key: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return parse_whole_number(key, text, low, high)
        except EdgeConfigurationError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _model_source(text: str) -> ModelSource:
    try:
        return parse_model_source(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    defaults = parse_configuration(DEFAULT_CONFIGURATION)
    parser = argparse.ArgumentParser(
        prog="python -m edge_greengrass",
        description=(
            "Serve ONNX models on a device: the modelship Greengrass component's process. It serves the "
            "Open Inference Protocol over HTTP (as `modelship serve` does) from the model components' "
            "artifact folders and, when started by a Greengrass nucleus, over local pub/sub too. It needs "
            "no AWS credentials and makes no network call, unless the cloud fallback is configured "
            "(MODELSHIP_EDGE_CLOUD_* variables, set by the recipe from the cloud* configuration keys)."
        ),
        epilog=(
            "Under a nucleus, workerThreads, maxRequestBytes, requestTopicPrefix, replyTopicPrefix, "
            "metricsTopic and metricsIntervalSeconds are read from the component's configuration over IPC "
            "and applied in place when they change (the server's figures, as GET /metrics reports them, are "
            "published on metricsTopic); "
            "--worker-threads and --max-request-bytes are for runs outside a nucleus. SIGTERM stops it "
            f"within about {SHUTDOWN_GRACE_SECONDS + SHUTDOWN_FINISH_SECONDS:g} s."
        ),
    )
    parser.add_argument(
        "--host", default=defaults.host, help="the address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_whole_number(PORT_KEY, 1, 65535),
        default=defaults.port,
        help="the port to listen on (default %(default)s)",
    )
    parser.add_argument(
        "--work",
        required=True,
        type=Path,
        help="a folder the door may write to ({work:path}); the store view is built in WORK/store",
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        type=_model_source,
        metavar="NAME=ARTIFACT_DIR",
        help=(
            "a model to serve: ARTIFACT_DIR holds its model.onnx and manifest.json (a model component's "
            "{com.modelship.model.NAME:artifacts:path}); the version is the manifest's. Repeat for each model"
        ),
    )
    parser.add_argument(
        "--worker-threads",
        type=_whole_number(WORKER_THREADS_KEY, 1, MAX_WORKER_THREADS),
        default=defaults.worker_threads,
        help="requests served at once, over HTTP and over IPC each (default %(default)s)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=_whole_number(MAX_REQUEST_BYTES_KEY, 1, 2**62),
        default=defaults.max_request_bytes,
        help="the request size cap, as in Lambda (default %(default)s)",
    )
    return parser


def parse_options(argv: Sequence[str] | None = None) -> DoorOptions:
    args = build_parser().parse_args(argv)
    settings = dataclasses.replace(
        parse_configuration(DEFAULT_CONFIGURATION),
        host=args.host,
        port=args.port,
        worker_threads=args.worker_threads,
        max_request_bytes=args.max_request_bytes,
    )
    return DoorOptions(work=args.work.absolute(), models=tuple(args.models), settings=settings)


class _WorkFolderBusy(Exception):
    pass


class _StopBeforeServing(BaseException):
    """SIGTERM while the door was still starting (importing onnxruntime can take seconds on a device)."""


def main(
    argv: Sequence[str] | None = None,
    *,
    ipc_factory: IpcClientFactory | None = None,
    load_handler: HandlerLoader = load_lambda_handler,
) -> int:
    options = parse_options(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    door = EdgeDoor(options, ipc_factory=ipc_factory, load_handler=load_handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        if door.server is None:
            raise _StopBeforeServing
        door.shutdown()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            status = door.start()
        except _StopBeforeServing:
            logger.info("stopped while starting")
            return 0
        if status:
            return status
        return door.serve()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
