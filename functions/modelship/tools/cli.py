"""The ``modelship`` command: push and list models, serve them locally, and call any endpoint."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from modelship import __version__
from modelship.core.errors import BadRequest, ModelshipError
from modelship.core.settings import api_key_from_env, default_store_path, store_from_env

DESCRIPTION = """\
modelship serves ONNX models over the Open Inference Protocol (KServe v2 / Triton HTTP) on AWS Lambda
and locally. A store is s3://bucket/prefix, file:///path or a path; the default is $MODELSHIP_STORE,
else a local store under ~/.local/share/modelship/store.
"""


def _existing_store(uri: str) -> Any:
    """The repository at ``uri``; a local one must exist (``push`` creates it): a typo in a path must
    not read as an empty store."""
    from modelship.core.blobs import LocalBlobStore
    from modelship.core.repository import ModelRepository

    repository = ModelRepository.open(uri)
    if isinstance(repository.blobs, LocalBlobStore) and not repository.blobs.root.is_dir():
        raise SystemExit(f"error: store {uri} does not exist (modelship push creates it)")
    return repository


def _version(text: str) -> int:
    """argparse type for a model version, in the grammar of ``names`` (no "01", no "+1")."""
    from modelship.core.names import parse_version

    try:
        return parse_version(text)
    except BadRequest as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, not {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 1000, not {text!r}")
    return int(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, not {text!r}")
    return value


def _default_store() -> str:
    return store_from_env() or str(default_store_path())


def _print_json(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE).decode())


def _read_labels(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        labels = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise SystemExit(f"error: {path} must hold a JSON list of strings or one label per line")
    return labels


def _read_preprocessing(path: Path) -> Any:
    from modelship.core.preprocessing import read_preprocessing

    return read_preprocessing(path)


def command_push(args: argparse.Namespace) -> int:
    from modelship.core.names import validate_model_name
    from modelship.core.repository import ModelRepository

    validate_model_name(args.name)  # before any I/O, the file included
    if not args.model.is_file():
        raise SystemExit(f"error: {args.model} is not a file")
    repository = ModelRepository.open(args.store)
    labels = _read_labels(args.labels) if args.labels else None
    preprocessing = _read_preprocessing(args.preprocessing) if args.preprocessing else None
    signer = _kms_signer(args.sign) if args.sign else None
    if not args.force and args.version is None:  # an explicit --version is asked for as it is
        with args.model.open("rb") as model:
            digest = hashlib.file_digest(model, "sha256").hexdigest()
        existing = repository.latest_holding(args.name, digest, labels, preprocessing=preprocessing)
        if (
            existing is not None
            and args.sign
            and repository.read_signature(args.name, existing.version) is None
        ):
            print(
                f"{args.name} version {existing.version} holds this model unsigned: pushing a signed version",
                file=sys.stderr,
            )
            existing = None
        if existing is not None:
            converted = existing.sha256 != digest
            print(
                f"{args.name} version {existing.version} already holds this model ("
                f"{'converted from ' if converted else ''}the same bytes, the same labels"
                f"{' and preprocessing' if preprocessing is not None else ''}): nothing pushed; --force "
                "pushes it again as a new version",
                file=sys.stderr,
            )
            _print_json(existing.to_json())
            return 0
    checks = "converting if needed, validating" if args.convert else "validating"
    print(f"{checks} {args.model} with onnxruntime and pushing to {repository.uri} ...", file=sys.stderr)
    manifest = repository.push(
        args.model,
        args.name,
        args.version,
        labels,
        convert=args.convert,
        preprocessing=preprocessing,
        signer=signer,
    )
    if manifest.conversion is not None:
        conversion = manifest.conversion
        print(
            f"converted with {conversion.converter} from IR version {conversion.original_ir_version}, opset "
            f"{_opsets(conversion.original_opset)} to IR version {conversion.ir_version}, opset "
            f"{_opsets(conversion.opset)}; checked: {conversion.checked}",
            file=sys.stderr,
        )
    elif args.convert:
        print("no conversion needed: onnxruntime loads the model as it is", file=sys.stderr)
    _print_json(manifest.to_json())
    print(f"pushed {manifest.name} version {manifest.version}", file=sys.stderr)
    return 0


def _kms_signer(key_id: str) -> Callable[[bytes], bytes]:
    """push --sign: a manifest's bytes signed with this KMS key (core.signing), as the document stored."""
    from modelship.core.signing import make_kms_client, sign_with_kms

    client = make_kms_client()

    def sign(manifest_bytes: bytes) -> bytes:
        return sign_with_kms(client, key_id, manifest_bytes).dumps()

    return sign


def _opsets(opsets: dict[str, int]) -> str:
    return ", ".join(f"{domain} {version}" for domain, version in sorted(opsets.items()))


def command_list(args: argparse.Namespace) -> int:

    listing = _existing_store(args.store).list_models()
    if args.json:
        _print_json(listing)
    elif not listing:
        print(f"no models in {args.store}")
    else:
        width = max(len("MODEL"), *(len(name) for name in listing))
        print(f"{'MODEL':<{width}}  VERSIONS")
        for name, versions in listing.items():
            print(f"{name:<{width}}  {', '.join(str(version) for version in versions)}")
    return 0


def command_export_default(args: argparse.Namespace) -> int:
    from modelship.core.default_model import export_default_model

    model_path, labels_path, _ = export_default_model(args.directory)
    print(f"wrote {model_path} and {labels_path}")
    return 0


def command_serve(args: argparse.Namespace) -> int:
    from modelship.core.names import parse_model_references
    from modelship.core.service import InferenceService
    from modelship.core.settings import PRELOAD_ENV, Settings
    from modelship.doors.apigw import proxy_handler
    from modelship.doors.local_http import LocalServer, serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    environ = dict(os.environ)
    preload: tuple[tuple[str, int | None], ...] | None = None
    if args.preload is not None:
        # The flag wins: $MODELSHIP_PRELOAD is not even parsed, so a stale value cannot stop the server.
        environ.pop(PRELOAD_ENV, None)
        try:
            preload = parse_model_references(args.preload)
        except BadRequest as error:
            raise BadRequest(f"--preload: {error.message}") from None
    settings = Settings.from_env(environ)
    store = args.store or store_from_env()
    if preload is None:
        preload = settings.preload
    if not store:
        from modelship.core.default_model import DEFAULT_MODEL_NAME, ensure_default_model
        from modelship.core.repository import ModelRepository

        store = _default_store()
        repository = ModelRepository.open(store)
        if not repository.versions(DEFAULT_MODEL_NAME):
            print(
                f"first run: training the bundled {DEFAULT_MODEL_NAME} model into {store} ...",
                file=sys.stderr,
            )
            with tempfile.TemporaryDirectory() as scratch:
                ensure_default_model(repository, Path(scratch))
        preload = preload or ((DEFAULT_MODEL_NAME, None),)
    else:
        _existing_store(store)
    settings = dataclasses.replace(settings, store_uri=store, preload=preload)
    service = InferenceService.from_settings(settings)
    _configure_access_log()
    try:
        server = LocalServer((args.host, args.port), proxy_handler(service), settings.max_request_bytes)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 1
    # Listening first: a slow or unreachable store must not keep the server from answering. Readiness
    # reports the models still loading, and the log says why one could not be loaded.
    service.start_preload()
    print(
        f"modelship {__version__} serving {store} on http://{args.host}:{args.port}/v2 (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    # After the grace period, runs still inside onnxruntime are cancelled (they answer 503).
    abandoned = serve_forever(server, on_shutdown=service.cancel_runs)
    if abandoned:
        # A thread still inside onnxruntime would abort the interpreter's finalisation (exit 134):
        # end the process here instead, logs flushed.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _configure_access_log() -> None:
    # One plain line per request on stderr, apart from the application log's format.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    access = logging.getLogger("modelship.http")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def command_infer(args: argparse.Namespace) -> int:
    from modelship.tools.client import InferenceClient, format_response, parse_input_value

    api_key = args.api_key or api_key_from_env()
    client = InferenceClient(args.url, sigv4=args.sigv4, api_key=api_key, timeout=args.timeout)
    metadata = client.metadata(args.model, args.model_version)
    if args.image is not None:
        return _infer_image(args, client, metadata)
    if args.preprocessing is not None or args.top is not None:
        raise SystemExit("error: --preprocessing and --top go with --image")
    specs = {spec["name"]: spec for spec in metadata.get("inputs", [])}
    inputs = {}
    for item in args.input:
        name, value = _input_argument(item, args.model, specs)
        if name in inputs:
            raise SystemExit(f"error: --input {name} is given twice")
        spec = specs[name]
        try:
            inputs[name] = parse_input_value(value, spec["datatype"], len(spec["shape"]))
        except ValueError as error:
            raise SystemExit(f"error: --input {name}: {error}") from None
    datatypes = {name: specs[name]["datatype"] for name in inputs}
    response = client.infer(
        args.model,
        inputs,
        datatypes,
        version=args.model_version,
        binary=args.binary,
        outputs=args.output or None,
    )
    sys.stdout.write(format_response(response))
    return 0


def _infer_image(args: argparse.Namespace, client: Any, metadata: dict[str, Any]) -> int:
    """``infer --image``: the image as the model's preprocessing block says (from the server's model
    metadata, or --preprocessing), then its top classes with their labels."""
    from modelship.core.datatypes import NUMPY_DTYPE_BY_DATATYPE
    from modelship.core.manifest import Preprocessing
    from modelship.tools.image_input import DEFAULT_TOP, ImageError, image_tensor, top_classes

    parameters = metadata.get("parameters") or {}
    if args.preprocessing is not None:
        preprocessing = _read_preprocessing(args.preprocessing)
    elif "preprocessing" in parameters:
        try:
            preprocessing = Preprocessing.from_json(parameters["preprocessing"])
        except (TypeError, ValueError, KeyError) as error:
            raise SystemExit(
                f"error: the server's preprocessing block for {args.model} is invalid: {error}"
            ) from None
    else:
        raise SystemExit(
            f"error: the metadata of {args.model} carries no preprocessing block (pushed without "
            "--preprocessing, or a server that does not pass it on): give it with --preprocessing FILE"
        )
    specs = {spec["name"]: spec for spec in metadata.get("inputs", [])}
    if preprocessing.input not in specs:
        raise SystemExit(
            f"error: the preprocessing feeds input {preprocessing.input!r}, but {args.model} has "
            f"{', '.join(sorted(specs)) or 'no inputs'}"
        )
    labels = parameters.get("labels")
    labels = labels if isinstance(labels, list) and all(isinstance(item, str) for item in labels) else None
    datatype = specs[preprocessing.input]["datatype"]
    if datatype not in NUMPY_DTYPE_BY_DATATYPE or NUMPY_DTYPE_BY_DATATYPE[datatype].kind != "f":
        raise SystemExit(
            f"error: input {preprocessing.input!r} is {datatype}, not floats: not an image input"
        )
    try:
        image = image_tensor(args.image, preprocessing)
        tensor = image.tensor.astype(NUMPY_DTYPE_BY_DATATYPE[datatype])
        response = client.infer(
            args.model,
            {preprocessing.input: tensor},
            {preprocessing.input: datatype},
            version=args.model_version,
            binary=args.binary,
        )
        output, ranked = top_classes(response, labels, args.top or DEFAULT_TOP)
    except ImageError as error:
        raise SystemExit(f"error: {error}") from None
    width, height = image.original_size
    print(
        f"{response.get('model_name', args.model)} version {response.get('model_version', '?')}: "
        f"{args.image.name} ({width}x{height}, resized to {preprocessing.size[1]}x{preprocessing.size[0]}), "
        f"output {output!r}"
    )
    label_width = max(len("CLASS"), *(len(item.label) for item in ranked))
    print(f"{'CLASS':<{label_width}}  SCORE")
    for item in ranked:
        print(f"{item.label:<{label_width}}  {item.score:.6g}")
    return 0


def _input_argument(item: str, model: str, specs: dict[str, Any]) -> tuple[str, str]:
    """``NAME=VALUE``, or just ``VALUE`` (``@file.npy``, ``@file.json``, JSON, numbers) for a model with
    one input."""
    name, separator, value = item.partition("=")
    if separator and name and not name.startswith(("@", "[", "{", '"')):
        if name not in specs:
            raise SystemExit(f"error: {model} has no input {name!r}; inputs: {', '.join(sorted(specs))}")
        return name, value
    if len(specs) != 1:
        raise SystemExit(
            f"error: --input {item[:60]!r} names no input, and {model} has {len(specs)} inputs "
            f"({', '.join(sorted(specs))}): write --input NAME=VALUE for each"
        )
    return next(iter(specs)), item


def _model_reference(text: str) -> tuple[str, int | None]:
    """argparse type for NAME[:VERSION], in the grammar of ``names``."""
    from modelship.core.names import parse_model_reference

    try:
        return parse_model_reference(text)
    except BadRequest as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def command_optimize(args: argparse.Namespace) -> int:
    from modelship.core.quantization import optimize_int8

    name, version = args.model
    repository = _existing_store(args.store)
    method = "static INT8, calibrated on " + str(args.calibration) if args.calibration else "dynamic INT8"
    print(
        f"quantising {name} ({method}) from {repository.uri} and comparing it with its source ...",
        file=sys.stderr,
    )
    result = optimize_int8(
        repository, name, version, calibration=args.calibration, min_agreement=args.min_agreement
    )
    source = result.source
    if args.json:
        _print_json(
            {
                "source": {"name": source.name, "version": source.version, "sha256": source.sha256},
                "report": result.report.to_json(),
                "min_agreement": args.min_agreement,
                "published": result.published.to_json() if result.published is not None else None,
                "refused": result.refusal,
            }
        )
    else:
        print(f"{source.name} version {source.version} against its INT8 version")
        print(result.report.table())
    if result.refusal is not None or result.published is None:
        print(f"error: {result.refusal or 'nothing was published'}", file=sys.stderr)
        return 1
    print(
        f"pushed {result.published.name} version {result.published.version} "
        f"({result.report.method}, from version {source.version})",
        file=sys.stderr,
    )
    return 0


def command_example(args: argparse.Namespace) -> int:
    from modelship.tools.examples import DIGITS_MODEL_NAME, ExampleError, write_digits_example

    print(f"training the {args.example} classifier on scikit-learn's bundled 8x8 digits ...", file=sys.stderr)
    try:
        example = write_digits_example(args.out)
    except ExampleError as error:
        raise SystemExit(f"error: {error}") from None
    print(
        f"test accuracy {example.test_accuracy:.4f} on {example.test_images} held-out images; wrote "
        f"{example.model}, {example.labels.name}, {example.preprocessing.name}, {example.calibration.name}, "
        + ", ".join(path.name for path in example.samples)
    )
    print(
        f"next: modelship push {example.model} --name {DIGITS_MODEL_NAME} --labels {example.labels} "
        f"--preprocessing {example.preprocessing}"
    )
    return 0


def command_edge_package(args: argparse.Namespace) -> int:
    from edge_greengrass.packaging import package

    result = package(
        args.store,
        args.model,
        args.out,
        component_name=args.component_name,
        component_version=args.component_version,
        configuration=_cloud_configuration(args),
        progress=_progress,
    )
    print(result.summary())
    print(f"\nnext: modelship edge publish --store {args.store} --from {args.out}")
    return 0


def _cloud_configuration(args: argparse.Namespace) -> dict[str, str] | None:
    """The hybrid fallback's recipe defaults from edge package's --cloud-* options (None: none given).
    The recipe builder validates them; the API key is never one of them (it belongs in a deployment)."""
    given = (
        ("cloudEndpoint", args.cloud_endpoint),
        ("cloudAuth", args.cloud_auth),
        ("cloudOnlyModels", args.cloud_only),
    )
    configuration = {key: value for key, value in given if value}
    return configuration or None


def command_edge_publish(args: argparse.Namespace) -> int:
    from edge_greengrass.packaging import read_package
    from edge_greengrass.publish import describe, publish

    result = publish(args.store, args.source, progress=_progress)
    print(describe(result, read_package(args.source)))
    return 0


def _add_edge_commands(commands: Any) -> None:
    edge = commands.add_parser(
        "edge",
        help="package models as AWS IoT Greengrass v2 components and publish them (docs/edge.md)",
        description="Package the inference component (com.modelship.Inference) and one component per "
        "model version for AWS IoT Greengrass v2, then publish the inference component's artifact to the "
        "store. Devices download the models from the store itself, verified against their digests.",
    )
    edge_commands = edge.add_subparsers(dest="edge_command", required=True, metavar="COMMAND")
    store_help = "the S3 store the models are in, s3://BUCKET/PREFIX (the recipes name its objects)"
    package = edge_commands.add_parser(
        "package",
        help="write the recipes and the inference component's zip to a folder",
        description="Read each model's manifest from the store and write, under --out, "
        "recipes/<ComponentName>-<ComponentVersion>.yaml for the inference component and for each model "
        "component, and artifacts/<ComponentName>/<ComponentVersion>/modelship-edge.zip (the core, the "
        "Lambda handler module, the edge door and the device's pinned requirements). The same inputs give "
        "byte-identical files and the same component version; any change gives a new version.",
    )
    package.add_argument("--store", required=True, metavar="URI", help=store_help)
    package.add_argument(
        "--model",
        action="append",
        required=True,
        type=_model_reference,
        metavar="NAME[:VERSION]",
        help="a model to serve on devices (default version: the latest); repeat for several models",
    )
    package.add_argument("--out", type=Path, required=True, metavar="DIR", help="the package folder")
    package.add_argument(
        "--component-name",
        default="com.modelship.Inference",
        metavar="NAME",
        help="the inference component's name (default: %(default)s)",
    )
    package.add_argument(
        "--component-version",
        metavar="X.Y.Z",
        help="the inference component's version (default: derived from its content)",
    )
    package.add_argument(
        "--cloud-endpoint",
        metavar="URL",
        help="the cloud API that devices forward models they do not hold to (https; docs/edge.md, hybrid)",
    )
    package.add_argument(
        "--cloud-auth",
        choices=["none", "sigv4", "apiKey"],
        help="how devices authenticate to the cloud API: sigv4 signs with the device role's credentials and "
        "makes the component depend on aws.greengrass.TokenExchangeService; an API key is set in the "
        "deployment's configuration (cloudApiKey), never in the recipe",
    )
    package.add_argument(
        "--cloud-only",
        metavar="NAMES",
        help="comma-separated models that devices always forward to the cloud",
    )
    package.set_defaults(run=command_edge_package)
    publish = edge_commands.add_parser(
        "publish",
        help="upload a package's artifacts to the store, verified, never overwriting",
        description="Upload the artifacts under DIR/artifacts to the s3:// URIs their recipes name (under "
        "the store's prefix: components/<name>/<version>/<file>), check each upload's SHA-256, and check "
        "that each model component's objects in the store match their digests. An existing object with "
        "the same bytes is left alone; one with other bytes is refused (component versions are "
        "immutable). Then create the component versions and the deployment: cdk deploy of the edge stack.",
    )
    publish.add_argument("--store", required=True, metavar="URI", help=store_help)
    publish.add_argument(
        "--from", dest="source", type=Path, required=True, metavar="DIR", help="a folder made by edge package"
    )
    publish.set_defaults(run=command_edge_publish)


def _add_optimize_command(commands: Any) -> None:
    optimize = commands.add_parser(
        "optimize",
        help="publish an INT8 version of a stored model, if it agrees with its source",
        description="Fetch NAME (VERSION, else the latest) from the store, verified against its manifest, "
        "and quantise it to INT8 with onnxruntime's quantization tools: dynamic quantisation, or static "
        "(QDQ, calibrated) with --calibration. The INT8 model must load in onnxruntime; then both are "
        "compared side by side in one run: size, p50 latency (interleaved runs after a warm-up, the same "
        "session options) and agreement (top-1 and the largest absolute error, on the calibration data, "
        "else on 64 samples generated from the input signature with a fixed seed). Below --min-agreement "
        "nothing is published and the command fails; otherwise the INT8 model is pushed as the next "
        "version with the source's labels and preprocessing, its lineage in the manifest's optimization "
        "field. Needs the onnx package (the local extra).",
    )
    optimize.add_argument(
        "model", type=_model_reference, metavar="NAME[:VERSION]", help="the source model (default: latest)"
    )
    optimize.add_argument(
        "--int8", action="store_true", required=True, help="quantise to INT8 (the one method so far)"
    )
    optimize.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE.npz",
        help="calibration data: an .npz with one array per model input, keyed by input name, samples along "
        "the first axis; makes the quantisation static, and the agreement is measured on it",
    )
    optimize.add_argument(
        "--store", default=_default_store(), metavar="URI", help="store URI (default: %(default)s)"
    )
    optimize.add_argument(
        "--min-agreement",
        type=_fraction,
        default=0.99,
        metavar="FRACTION",
        help="refuse to publish if the INT8 model's top-1 agrees with the source's on less than this "
        "fraction of the samples (default: %(default)s)",
    )
    optimize.add_argument("--json", action="store_true", help="print JSON instead of a table")
    optimize.set_defaults(run=command_optimize)


def _add_example_command(commands: Any) -> None:
    example = commands.add_parser(
        "example",
        help="build an example model to push and try: digits, an image classifier",
        description="Build an example model with our own code, nothing downloaded. digits: a small image "
        "classifier trained in seconds on scikit-learn's bundled 8x8 handwritten digits (the examples "
        "extra), written to DIR as digits.onnx, digits.labels.json, digits.preprocessing.json (for push "
        "--preprocessing), digits.calibration.npz (for optimize --int8 --calibration) and sample images "
        "digit-3.png and digit-7.png (for infer --image).",
    )
    example.add_argument("example", choices=["digits"], help="which example")
    example.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write to")
    example.set_defaults(run=command_example)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelship", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"modelship {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    push = commands.add_parser(
        "push",
        help="validate an ONNX model and publish it as a new version",
        description="Load MODEL with onnxruntime to prove it is servable, read its signature, then write "
        "models/NAME/VERSION/model.onnx and, last, manifest.json (so a half-written version is never "
        "visible). Prints the manifest. A model whose IR version or opset is newer than the bundled "
        "onnxruntime loads is refused with both named, unless --convert converts it. Without --version, if "
        "the latest version already holds the same bytes and labels, nothing is pushed (unless --force).",
    )
    push.add_argument("model", type=Path, metavar="MODEL.onnx", help="the ONNX model file")
    push.add_argument("--name", required=True, help="model name: [A-Za-z0-9][A-Za-z0-9_.-]{0,127}, no '..'")
    push.add_argument(
        "--version",
        type=_version,
        metavar="N",
        help="version number (default: the latest + 1); versions are immutable",
    )
    push.add_argument(
        "--store", default=_default_store(), metavar="URI", help="store URI (default: %(default)s)"
    )
    push.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class labels: a JSON list of strings, or one label per line",
    )
    push.add_argument(
        "--preprocessing",
        type=Path,
        metavar="FILE.json",
        help="an image model's preprocessing block (input, size, channels, layout, scale, mean, std; "
        "docs/contracts.md), checked against the model's input and recorded in the manifest, from where "
        "'infer --image' reads it",
    )
    push.add_argument(
        "--convert",
        action="store_true",
        help="if onnxruntime cannot load the model's IR version or opset, convert it with the onnx package "
        "(the local extra), check it and push the converted model, the conversion recorded in the manifest",
    )
    push.add_argument(
        "--force",
        action="store_true",
        help="push a new version even if the latest version already holds the same bytes and labels",
    )
    push.add_argument(
        "--sign",
        metavar="KMS_KEY",
        help="sign the manifest with this asymmetric AWS KMS key (key id, ARN or alias/NAME; ECC_NIST_P256 "
        "or RSA, SIGN_VERIFY) and store the signature beside it (manifest.sig.json), before the manifest; "
        "needs kms:GetPublicKey and kms:Sign. Servers with MODELSHIP_TRUSTED_KEYS serve only signed versions",
    )
    push.set_defaults(run=command_push)

    listing = commands.add_parser(
        "list",
        help="list models and their versions",
        description="List every model in the store with its complete (manifested) versions.",
    )
    listing.add_argument(
        "--store", default=_default_store(), metavar="URI", help="store URI (default: %(default)s)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=command_list)

    serve = commands.add_parser(
        "serve",
        help="serve a store over HTTP on this machine (the same core and event translation as Lambda)",
        description="Serve the Open Inference Protocol from a local threaded HTTP/1.1 server: each request "
        "becomes an API Gateway REST proxy event and goes through the same translation and core as in "
        "Lambda, so it gets the same response. Without --store (and $MODELSHIP_STORE), serves the bundled "
        "iris model from a local default store, creating it on first run.",
    )
    serve.add_argument(
        "--store", metavar="URI", help="store URI (default: $MODELSHIP_STORE, else the bundled default model)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument(
        "--port", type=_port, default=8080, help="port to listen on, 1-65535 (default: %(default)s)"
    )
    serve.add_argument(
        "--preload", metavar="NAMES", help="comma-separated models to load at start, e.g. 'iris,resnet:3'"
    )
    serve.set_defaults(run=command_serve)

    infer = commands.add_parser(
        "infer",
        help="call any Open Inference Protocol endpoint and print the outputs",
        description="Reads the model's metadata for input datatypes, sends one inference request, and prints "
        "the response as JSON. VALUE is inline JSON (e.g. '[[5.1,3.5,1.4,0.2]]'), comma-separated numbers, "
        "@file.npy, or @file.json (a list, or an object with data and shape).",
    )
    infer.add_argument(
        "--url",
        required=True,
        metavar="URL",
        help="base URL, e.g. http://127.0.0.1:8080 or https://ID.execute-api.REGION.amazonaws.com/prod",
    )
    infer.add_argument("--model", required=True, metavar="NAME", help="model name")
    infer.add_argument(
        "--model-version", type=_version, metavar="N", help="model version (default: the latest)"
    )
    given = infer.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--input",
        action="append",
        metavar="NAME=(VALUE|@file.npy|@file.json)",
        help="an input tensor; repeat for several inputs. NAME= may be left out for a model with one input",
    )
    given.add_argument(
        "--image",
        type=Path,
        metavar="FILE",
        help="a PNG or JPEG image, resized and normalised as the model's preprocessing block says (the "
        "examples extra's Pillow); prints the top classes with their labels",
    )
    infer.add_argument(
        "--preprocessing",
        type=Path,
        metavar="FILE.json",
        help="with --image: this preprocessing block instead of the one in the model's metadata",
    )
    infer.add_argument(
        "--top", type=_positive, metavar="K", help="with --image: how many classes to print (default: 5)"
    )
    infer.add_argument("--output", action="append", metavar="NAME", help="request only these outputs")
    infer.add_argument("--binary", action="store_true", help="use the binary tensor data extension both ways")
    infer.add_argument(
        "--sigv4", action="store_true", help="sign requests with AWS SigV4 (API Gateway IAM auth)"
    )
    infer.add_argument(
        "--api-key",
        metavar="KEY",
        help="send this API Gateway key as x-api-key (deployments with auth=api_key; "
        "default: $MODELSHIP_API_KEY)",
    )
    infer.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds per HTTP request (default: %(default)s)",
    )
    infer.set_defaults(run=command_infer)

    export = commands.add_parser(
        "export-default",
        help="write the bundled iris model and its labels to a directory",
        description="Train the bundled iris classifier and write DIR/iris.onnx and DIR/iris.labels.json, "
        "ready "
        "for 'modelship push DIR/iris.onnx --name iris --labels DIR/iris.labels.json'.",
    )
    export.add_argument("directory", type=Path, metavar="DIR")
    export.set_defaults(run=command_export_default)
    _add_optimize_command(commands)
    _add_example_command(commands)
    _add_edge_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from modelship.tools.client import ClientError

    try:
        result: int = args.run(args)
        return result
    except ModelshipError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2 if error.status < 500 else 1
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # S3 stores: missing credentials, access denied, no such bucket. botocore is imported only
        # for s3:// stores, so it is recognised by module rather than imported here.
        if type(error).__module__.startswith("botocore"):
            print(f"error: S3: {error}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
