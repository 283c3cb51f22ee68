"""Ray Serve: replicas of a `serving.Predictor` behind one HTTP endpoint, with batching.

`start()` deploys the application. Without `address` it starts a local Ray whose servers
listen on 127.0.0.1 only; with one ("auto", "ray://head:10001") it joins that cluster,
where the artifact path must be readable on every node that gets a replica. Each replica
holds one Predictor; the images of concurrent requests (and of one multi-image request)
are gathered by `serve.batch` into one inference call.

HTTP (relative to the route prefix):
    POST /           {"image": "<base64>"}            -> {"top": [...], "batch_size": n, ...}
                     {"images": ["<base64>", ...]}    -> {"predictions": [...]}
                     image bytes, Content-Type image/* -> as for one image
    GET  /healthz    -> {"status": "ok", "model": ..., "backend": ...}
Ray's own: `GET /-/healthz` and `/-/routes` on the proxy, and Prometheus metrics
(`ray_serve_*`, e.g. `ray_serve_actual_batch_size`) from each node's metrics agent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import errno
import io
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.backends import BackendUnavailableError
from artifacts.errors import GlnetExportError, OptionError, one_line

INSTALL_HINT = "Ray Serve is not installed: pip install 'glnet-export[serve]'"
# Ray reports usage statistics to its developers unless told not to; a tool that starts
# Ray on a user's machine should not make that choice for them (RAY_USAGE_STATS_ENABLED=1 opts in).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
try:
    import ray
    from ray import serve
except ImportError:
    raise BackendUnavailableError(INSTALL_HINT) from None

MAX_BODY = 32 * 2**20  # bytes per request
MAX_IMAGES = 64  # images per request
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode (ray_constants)


class RequestError(GlnetExportError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServeOptions:
    replicas: int = 1
    max_batch: int = 8  # images per inference call
    batch_wait_s: float = 0.01  # how long a replica waits to fill a batch
    host: str = "127.0.0.1"  # HTTP proxy address; 0.0.0.0 exposes it to the network
    port: int = 8000
    address: str | None = None  # None: start a local Ray; "auto" / "ray://...": join a cluster
    num_cpus: int | None = None  # local Ray: CPUs it may use (default: all)
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    device: str = "cpu"
    threads: int | None = None  # inference threads per replica; default: its CPUs
    top_k: int = 5
    app_name: str = "glnet"
    route_prefix: str = "/"

    def validate(self) -> None:
        if self.replicas < 1 or self.max_batch < 1 or self.top_k < 1:
            raise OptionError("--replicas, --max-batch and --top-k must be >= 1")
        if not 0 <= self.batch_wait_s <= 10:
            raise OptionError(f"batch wait must be 0..10 s, not {self.batch_wait_s}")
        if not 0 <= self.port < 65536:
            raise OptionError(f"--port must be 0..65535, not {self.port}")
        if self.cpus_per_replica <= 0 and self.gpus_per_replica <= 0:
            raise OptionError("a replica needs CPUs or GPUs (--cpus-per-replica / --gpus-per-replica)")
        if not self.route_prefix.startswith("/"):
            raise OptionError(f"route prefix must start with '/', not {self.route_prefix!r}")


@dataclass
class ServeInfo:
    url: str
    artifact: Path
    app_name: str
    replicas: int
    max_batch: int
    started_ray: bool  # whether start() started Ray (and stop() should end it)
    seconds: float


@serve.deployment(name="GLNet")
class GlnetDeployment:
    """One replica: a Predictor, the HTTP handler and the batched inference."""

    def __init__(self, artifact: str, options: dict[str, Any]) -> None:
        _bind_replica_grpc_to_node_ip()
        from serving.predictor import Predictor

        self.predictor = Predictor(artifact, device=options["device"], threads=options["threads"],
                                   top_k=options["top_k"], max_batch=options["max_batch"])
        batched: Any = self.classify  # serve.batch's wrapper carries the setters
        batched.set_max_batch_size(options["max_batch"])
        batched.set_batch_wait_timeout_s(options["batch_wait_s"])
        meta = self.predictor.metadata
        self.info = {"model": meta.model, "artifact": Path(artifact).name, "backend": self.predictor.backend,
                     "random_weights": meta.random_weights, "max_batch": options["max_batch"]}
        context = serve.get_replica_context()
        self.replica = getattr(getattr(context, "replica_id", None), "unique_id", "")

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if request.url.path.rstrip("/").endswith("/healthz"):
            return {"status": "ok", **self.info}
        if request.method != "POST":
            return JSONResponse({"error": "POST an image (JSON {\"image\": base64} or image bytes)"}, 405)
        try:
            blobs, single = await _read_request(request)
            images = await asyncio.to_thread(self._decode, blobs)  # decoding must not block the event loop
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        results = await asyncio.gather(*(self.classify(image) for image in images))
        return results[0] if single else {"predictions": list(results)}

    def _decode(self, blobs: list[bytes]) -> list[Any]:
        from PIL import Image

        images = []
        for i, blob in enumerate(blobs):
            where = f"image {i}: " if len(blobs) > 1 else ""
            try:
                with Image.open(io.BytesIO(blob)) as file:
                    images.append(self.predictor.load_image(file.convert("RGB")))  # checks the size
            except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
                raise RequestError(f"{where}{one_line(exc)}") from None
        return images

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # re-set per deployment in __init__
    async def classify(self, images: list[Any]) -> list[dict[str, Any]]:
        # Predictor calls are thread-safe; a thread keeps the replica answering /healthz meanwhile.
        predictions: list[Any] = await asyncio.to_thread(self.predictor.predict, images)  # type: ignore[arg-type]
        return [{"top": [dataclasses.asdict(c) for c in p.top], "backend": p.backend, "batch_size": len(images),
                 "replica": self.replica} for p in predictions]


async def _read_request(request: Any) -> tuple[list[bytes], bool]:
    """The image bytes of a request, and whether it asked for one image (not a list)."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise RequestError(f"request body over {MAX_BODY // 2**20} MB", 413)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        if not body:
            raise RequestError("empty request body")
        return [body], True
    try:
        data = json.loads(body)
    except ValueError:
        raise RequestError(f"expected JSON {{\"image\": base64}} or {{\"images\": [...]}}, or image bytes with "
                           f"Content-Type image/* (got Content-Type {ctype or 'none'})", 415) from None
    if isinstance(data, dict) and isinstance(data.get("image"), str):
        return [_b64(data["image"], "image")], True
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list) and images and all(isinstance(x, str) for x in images):
        if len(images) > MAX_IMAGES:
            raise RequestError(f"{len(images)} images in one request; at most {MAX_IMAGES}", 413)
        return [_b64(x, f"images[{i}]") for i, x in enumerate(images)], False
    raise RequestError('expected {"image": "<base64>"} or {"images": ["<base64>", ...]}')


def _b64(text: str, where: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL, as browsers make them
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None


def _bind_replica_grpc_to_node_ip() -> None:
    """Make the replica's inter-deployment gRPC server listen on the node IP, not everywhere.

    Ray Serve 2.60 binds it to "[::]:0" (every interface), while its callers dial the
    node IP only. On a local Ray (node IP 127.0.0.1) that would leave a port open to the
    network for nothing; rebinding it to the node IP keeps it local. Runs in the replica
    before Ray starts that server; a no-op where Ray's internals differ or on a cluster.
    """
    try:
        from ray.serve._private import replica

        original = replica.add_port_to_grpc_server
        host = ray.util.get_node_ip_address()
        if not ipaddress.ip_address(host).is_loopback or getattr(original, "_glnet", False):
            return
    except (ImportError, AttributeError, ValueError):
        return

    def bind(server: Any, address: str) -> Any:
        return original(server, f"{host}:{address[5:]}" if address.startswith("[::]:") else address)

    bind._glnet = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind


def build_app(artifact: str | Path, options: ServeOptions) -> Any:
    """The Ray Serve application (for `serve.run`, or a Serve config's import path)."""
    threads = options.threads or max(1, int(options.cpus_per_replica))
    replica_options = {"device": options.device, "threads": threads, "top_k": options.top_k,
                       "max_batch": options.max_batch, "batch_wait_s": options.batch_wait_s}
    actor = {"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica}
    # Room for a full batch waiting while another runs; the default (5) would cap batches at 5.
    deployment: Any = GlnetDeployment  # a serve Deployment once decorated
    return deployment.options(num_replicas=options.replicas, max_ongoing_requests=2 * options.max_batch,
                                   ray_actor_options=actor).bind(str(Path(artifact).resolve()), replica_options)


def start(artifact: str | Path, options: ServeOptions | None = None) -> ServeInfo:
    """Deploy `artifact` and return once every replica answers; `stop()` undoes it."""
    options = options or ServeOptions()
    options.validate()
    begin = time.perf_counter()
    artifact = Path(artifact).resolve()
    local = options.address is None
    if local and not ray.is_initialized() and threading.current_thread() is not threading.main_thread():
        # Ray starts its GCS and raylet with PR_SET_PDEATHSIG, which fires when the *thread*
        # that started them ends: started from a worker thread, Ray dies with that thread.
        raise OptionError("start a local Ray from the main thread (or call ray.init() there first)")
    if local:  # fail here, in one line, not in replicas Ray restarts over and over
        _check_artifact(artifact)
        _check_port(options.host, options.port)
    started = False
    if not ray.is_initialized():
        if local:
            _local_only()
            ray.init(num_cpus=options.num_cpus, include_dashboard=False)
        else:
            ray.init(address=options.address)
        started = True
    try:
        if local:
            have = ray.cluster_resources().get("CPU", 0)
            if options.replicas * options.cpus_per_replica > have:
                raise OptionError(f"{options.replicas} replicas x {options.cpus_per_replica:g} CPUs need more than "
                                  f"the {have:g} CPUs of the local Ray: lower --replicas or --cpus-per-replica")
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_app(artifact, options), name=options.app_name, route_prefix=options.route_prefix)
    except BaseException:
        stop(started)
        raise
    host = options.host if ":" not in options.host else f"[{options.host}]"
    return ServeInfo(url=f"http://{host}:{options.port}{options.route_prefix.rstrip('/')}/", artifact=artifact,
                     app_name=options.app_name, replicas=options.replicas, max_batch=options.max_batch,
                     started_ray=started, seconds=time.perf_counter() - begin)


def stop(shutdown_ray: bool = True) -> None:
    """Remove the Serve applications; end Ray too when start() started it."""
    with contextlib.suppress(Exception):
        serve.shutdown()
    if shutdown_ray and ray.is_initialized():
        ray.shutdown()


def query(url: str, image: str | Path, timeout: float = 30.0) -> dict[str, Any]:
    """Send one image file to a running server; its JSON answer (a minimal client)."""
    data = Path(image).read_bytes()
    ctype = "image/png" if Path(image).suffix.lower() == ".png" else "image/jpeg"
    request = urllib.request.Request(url, data=data, headers={"Content-Type": ctype}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's own server
        return json.loads(response.read())


def _check_artifact(artifact: Path) -> None:
    from serving.predictor import Predictor

    with Predictor(artifact, threads=1) as predictor:
        if predictor.task != "classify":
            raise OptionError(f"{artifact.name} is a feature artifact; the server answers with classes "
                              "(serve a classifier export)")


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or exc
            # "Address already in use" is the port's fault; anything else is the --host's.
            hint = "choose another --port" if exc.errno == errno.EADDRINUSE else "check --host"
            raise OptionError(f"cannot listen on {host}:{port}: {reason} ({hint})") from None


def _local_only() -> None:
    # Ray's single-machine mode: its node IP becomes 127.0.0.1, so its GCS, raylet and
    # workers listen on the loopback interface instead of every interface. Set before
    # ray.init so the processes it starts inherit it; the driver's copy is a module constant.
    os.environ[LOCAL_ONLY_ENV] = "0"
    with contextlib.suppress(ImportError, AttributeError):
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
