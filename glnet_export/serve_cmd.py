"""`glnet-export serve` (Ray Serve) and `glnet-export triton` (a Triton model repository)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import checked_output, err, fail, handle_errors, human_bytes, out, write_json


@handle_errors
def serve(
    artifact: Annotated[Path, typer.Argument(help="A classifier artifact (.onnx, .xml, .engine).")],
    replicas: Annotated[int, typer.Option(min=1, help="Replicas, each with its own Predictor.")] = 1,
    max_batch: Annotated[int, typer.Option(min=1, help="Images per inference call (serve.batch).")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a replica waits to fill a batch.")] = 10.0,
    host: Annotated[str, typer.Option(help="HTTP address; 0.0.0.0 exposes the server to the network.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    address: Annotated[str | None, typer.Option(help="Join a running Ray cluster ('auto', 'ray://head:10001') "
                                                "instead of starting a local Ray.")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="Local Ray: CPUs it may use (default: all).")] = None,
    cpus_per_replica: Annotated[float, typer.Option(help="CPUs reserved per replica.")] = 1.0,
    gpus_per_replica: Annotated[float, typer.Option(help="GPUs reserved per replica (with --device cuda).")] = 0.0,
    device: Annotated[str, typer.Option(help="Device of the artifact's back-end.")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="Inference threads per replica (default: its CPUs).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes per answer.")] = 5,
    check: Annotated[bool, typer.Option("--check", help="Send the sample photographs once, compare the answers "
                                        "with a local Predictor, then stop (a deployment smoke test).")] = False,
) -> None:
    """Serve an artifact over HTTP with Ray Serve (replicas, request batching); Ctrl-C stops it."""
    import runtimes
    from serving.ray_app import ServeOptions, start, stop

    # Ray turns a bad value into worker tracebacks or a wait that never ends (a GPU the
    # cluster lacks, a device the back-end refuses): check what can be checked here first.
    if threads is not None and threads < 1:
        raise fail(f"--threads must be >= 1, not {threads}")
    if cpus_per_replica <= 0 or gpus_per_replica < 0:
        raise fail("--cpus-per-replica must be above 0 and --gpus-per-replica not negative")
    if gpus_per_replica > 0 and device == "cpu":
        raise fail("--gpus-per-replica reserves GPUs for a GPU --device (cuda, or GPU for OpenVINO); "
                   "with --device cpu leave it at 0")
    with err.status(f"loading {artifact.name} on {device}"), runtimes.load(artifact, device=device, threads=1):
        pass  # an unreadable artifact or a device this machine lacks fails here, in one line
    options = ServeOptions(replicas=replicas, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000, host=host,
                           port=port, address=address, num_cpus=num_cpus, cpus_per_replica=cpus_per_replica,
                           gpus_per_replica=gpus_per_replica, device=device, threads=threads, top_k=top_k)
    with err.status(f"starting Ray Serve with {replicas} replica(s) of {artifact.name}"):
        info = start(artifact, options)
    try:
        out.print(f"[bold green]serving[/] {escape(str(info.artifact))} at [bold]{info.url}[/] "
                  f"({info.replicas} replica(s), batches of up to {info.max_batch}, ready in {info.seconds:.1f} s)")
        out.print(f"  curl -X POST {info.url} -H 'Content-Type: image/jpeg' --data-binary @photo.jpg")
        out.print(f"  health {info.url}healthz, Ray's proxy {info.url.rstrip('/')}/-/healthz")
        if check:
            _check(info.url, info.artifact, device)
            return
        out.print("Ctrl-C stops it")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        err.print("stopping")
    finally:
        stop(info.started_ray)


def _check(url: str, artifact: Path, device: str) -> None:
    from artifacts.photos import sample_photo_paths
    from serving.predictor import Predictor
    from serving.ray_app import query

    photos = sample_photo_paths(4)
    if not photos:
        raise fail("--check needs photographs: pip install scikit-image")
    with Predictor(artifact, device=device, threads=1) as local:
        for photo in photos:
            answer, expected = query(url, photo), local.predict(photo)
            top = answer["top"][0]
            same = top["index"] == expected.top[0].index  # type: ignore[union-attr]
            out.print(f"  {photo.name}: {top['label']} {top['probability']:.2%} (batch {answer['batch_size']}) "
                      f"{'[green]= local[/]' if same else '[red]differs from local[/]'}")
            if not same:
                raise fail(f"the server's answer for {photo.name} differs from the local Predictor's")
    out.print("[bold green]PASSED[/] the server answers as the local Predictor does")


@handle_errors
def triton(
    artifact: Annotated[Path, typer.Argument(help="An artifact: .onnx, OpenVINO .xml (+ .bin), TensorRT .engine "
                                             "(+ its manifest).")],
    repo: Annotated[Path, typer.Option("--repo", help="The model repository folder (made if missing).")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the artifact's file stem).")] = None,
    version: Annotated[int, typer.Option(min=1, help="Version folder.")] = 1,
    max_batch: Annotated[int | None, typer.Option(help="max_batch_size for a dynamic-batch artifact "
                                                  "(default: 8; TensorRT: the profile's max).")] = None,
    preferred: Annotated[str | None, typer.Option(help="Preferred batch sizes, e.g. 4,8 "
                                                  "(default: half the max and the max).")] = None,
    queue_delay_us: Annotated[int, typer.Option(min=0, help="Dynamic batching: max queue delay.")] = 100,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (instance_group count).")] = 1,
    kind: Annotated[str | None, typer.Option(help="auto | gpu | cpu (default: TensorRT gpu, OpenVINO cpu, "
                                             "ONNX auto).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing model folder.")] = False,
    portable: Annotated[bool, typer.Option("--portable", help="ONNX: put the file in as it is, not its "
                                           "onnxruntime-targeted form (for TensorRT / OpenVINO accelerators "
                                           "inside Triton's onnxruntime back-end).")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the result as JSON ('-': stdout).")] = None,
) -> None:
    """Write a Triton Inference Server model repository entry (config.pbtxt checked against Triton's schema)."""
    from artifacts.errors import OptionError
    from serving.triton_repo import TritonOptions, write_triton_repo

    try:
        sizes = tuple(int(s) for s in preferred.split(",")) if preferred else None
    except ValueError:
        raise OptionError(f"--preferred {preferred!r} is not a list of sizes like 4,8") from None
    result = write_triton_repo(artifact, repo, TritonOptions(
        name=name, version=version, max_batch=max_batch, preferred_batch=sizes, queue_delay_us=queue_delay_us,
        instances=instances, kind=kind, overwrite=overwrite, onnxruntime_target=not portable))
    write_json(result, json_path)
    if json_path is not None and str(json_path) == "-":
        return
    table = Table(show_header=False, box=None, title=f"[bold]Triton[/] {result.name} -> {result.model_dir}",
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("runtime", result.runtime)
    table.add_row("config", f"{result.config_path} (parsed back into Triton's ModelConfig)")
    for f in result.model_files:
        table.add_row("model", f"{f} ({human_bytes(f.stat().st_size)})")
    batching = f"max_batch_size {result.max_batch_size}" if result.max_batch_size else "max_batch_size 0 (fixed batch)"
    table.add_row("batching", batching)
    for label, specs in (("input", result.inputs), ("output", result.outputs)):
        for tname, dims in specs.items():
            table.add_row(label, f"{tname} {dims}")
    out.print(table)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    out.print(f"serve it: tritonserver --model-repository {result.model_dir.parent}")
