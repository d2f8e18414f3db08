"""A small Open Inference Protocol client, JSON or binary, with optional SigV4 signing for API Gateway."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from modelship.core.datatypes import BYTES, NUMPY_DTYPE_BY_DATATYPE
from modelship.core.errors import ModelshipError
from modelship.core.wire import decode_bytes_elements, encode_bytes_elements
from modelship.doors.compression import GZIP, MIN_COMPRESSED_BYTES, compress, decode_body

_EXECUTE_API_HOST = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com")
# The most a compressed response may inflate to: a server that sends a gzip bomb gets an error, not the
# client's memory.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        # Status 0: no HTTP exchange happened (a bad URL, no credentials).
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes


class InferenceClient:
    def __init__(
        self,
        base_url: str,
        *,
        sigv4: bool = False,
        api_key: str | None = None,
        timeout: float = 30.0,
        compression: bool = True,
    ) -> None:
        """``compression``: ask for gzip responses (``Accept-Encoding: gzip``) and gzip request bodies
        over ``MIN_COMPRESSED_BYTES``, as the server does its responses; for JSON requests only. Binary
        tensors compress by half at best and cost both sides milliseconds per megabyte (224x224x3:
        about 17 ms of server time to save 330 KiB, docs/benchmarks.md), so binary requests go as they
        are and ask for no coding."""
        if not base_url.startswith(("http://", "https://")):
            raise ClientError(0, f"the URL must start with http:// or https://, got {base_url[:100]!r}")
        # The server's banner ends in /v2; the client adds it to every path itself.
        self.base_url = base_url.rstrip("/").removesuffix("/v2")
        self.sigv4 = sigv4
        self.api_key = api_key
        self.timeout = timeout
        self.compression = compression

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> HttpResult:
        url = self.base_url + path
        all_headers = dict(headers or {})
        binary = any(key.lower() == "inference-header-content-length" for key in all_headers)
        if self.compression and not binary:
            all_headers.setdefault("Accept-Encoding", GZIP)
            if len(body) > MIN_COMPRESSED_BYTES:
                body = compress(body, GZIP)
                all_headers["Content-Encoding"] = GZIP
        if self.api_key:
            all_headers["x-api-key"] = self.api_key
        if self.sigv4:
            all_headers = _sign(method, url, body, all_headers)
        request = urllib.request.Request(url, data=body or None, method=method, headers=all_headers)  # noqa: S310
        try:
            # The scheme is http or https (checked in __init__); the URL is the user's own --url.
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310  # nosec B310
                response_headers = {k.lower(): v for k, v in response.headers.items()}
                return HttpResult(
                    response.status, response_headers, _decoded(response.read(), response_headers)
                )
        except urllib.error.HTTPError as error:
            raw = _decoded(error.read(), {k.lower(): v for k, v in (error.headers or {}).items()})
            try:
                message = str(orjson.loads(raw).get("error", raw[:500].decode("utf-8", "replace")))
            except (orjson.JSONDecodeError, AttributeError):
                message = raw[:500].decode("utf-8", "replace")
            raise ClientError(error.code, message) from None
        except urllib.error.URLError as error:
            reason = error.reason.strerror if isinstance(error.reason, OSError) else error.reason
            raise ClientError(0, f"cannot reach {self.base_url}: {reason or error.reason}") from None
        except TimeoutError:
            raise ClientError(0, f"no answer from {self.base_url} within {self.timeout:g} s") from None

    def model_path(self, model: str, version: int | None) -> str:
        return f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "")

    def metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        result = self.request("GET", self.model_path(model, version))
        document: dict[str, Any] = orjson.loads(result.body)
        return document

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        datatypes: dict[str, str],
        *,
        version: int | None = None,
        binary: bool = False,
        outputs: list[str] | None = None,
    ) -> dict[str, Any]:
        body, headers = encode_request(inputs, datatypes, binary=binary, outputs=outputs)
        result = self.request("POST", self.model_path(model, version) + "/infer", body, headers)
        return decode_response(result.body, result.headers.get("inference-header-content-length"))


def _decoded(body: bytes, headers: dict[str, str]) -> bytes:
    """The response body without its content coding (gzip or deflate), within ``MAX_RESPONSE_BYTES``."""
    coding = headers.get("content-encoding")
    if coding is None:
        return body
    try:
        return decode_body(body, coding, MAX_RESPONSE_BYTES)
    except ModelshipError as error:
        raise ClientError(0, f"cannot decode the response: {error.message}") from None


def encode_request(
    inputs: dict[str, np.ndarray], datatypes: dict[str, str], *, binary: bool, outputs: list[str] | None
) -> tuple[bytes, dict[str, str]]:
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in inputs.items():
        datatype = datatypes[name]
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if binary:
            raw = encode_bytes_elements(array) if datatype == BYTES else np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = (
                [str(item) for item in array.ravel()] if datatype == BYTES else array.ravel().tolist()
            )
        entries.append(entry)
    document: dict[str, Any] = {"inputs": entries}
    if outputs:
        document["outputs"] = [{"name": name, "parameters": {"binary_data": binary}} for name in outputs]
    elif binary:
        document["parameters"] = {"binary_data_output": True}
    header = orjson.dumps(document)
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {
        "Content-Type": "application/octet-stream",
        # API Gateway returns a binary (base64-flagged) response as raw bytes only when the request's
        # Accept header names a binary media type.
        "Accept": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def decode_response(body: bytes, header_length: str | None) -> dict[str, Any]:
    split = int(header_length) if header_length is not None else len(body)
    document: dict[str, Any] = orjson.loads(body[:split])
    offset = split
    for output in document.get("outputs", []):
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        raw = body[offset : offset + size]
        offset += size
        if output["datatype"] == BYTES:
            output["data"] = [item.decode("utf-8", "replace") for item in decode_bytes_elements(raw)]
        else:
            output["data"] = np.frombuffer(raw, dtype=NUMPY_DTYPE_BY_DATATYPE[output["datatype"]])
        output["parameters"].pop("binary_data_size")
        if not output["parameters"]:
            del output["parameters"]
    return document


def format_response(document: dict[str, Any]) -> str:
    """Indented JSON with each output on one line, so tensors stay readable in a terminal."""
    options = orjson.OPT_SERIALIZE_NUMPY
    lines = ["{"]
    for key, value in document.items():
        if key != "outputs":
            lines.append(f"  {orjson.dumps(key).decode()}: {orjson.dumps(value, option=options).decode()},")
    outputs = [orjson.dumps(output, option=options).decode() for output in document.get("outputs", [])]
    lines.append('  "outputs": [')
    lines.extend(
        f"    {output}{',' if index < len(outputs) - 1 else ''}" for index, output in enumerate(outputs)
    )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def parse_input_value(value: str, datatype: str, expected_rank: int) -> np.ndarray:
    """``@file.npy``, ``@file.json`` (a list, or {"data", "shape"}) or an inline JSON value."""
    if value.startswith("@"):
        array = _read_input_file(Path(value[1:]))
    elif value.lstrip().startswith(("[", "{")):
        try:
            array = np.asarray(orjson.loads(value))
        except (orjson.JSONDecodeError, ValueError) as error:
            raise ValueError(f"not valid JSON ({error}): {value[:60]}") from None
    elif datatype == BYTES:
        array = np.asarray([value])
    else:
        try:
            array = np.asarray([float(item) for item in value.split(",")])
        except ValueError:
            raise ValueError(f"expected numbers, a JSON array, or @file: {value[:60]}") from None
    if expected_rank and array.ndim == expected_rank - 1:
        # Convenience: a single example without its batch dimension.
        array = array[np.newaxis, ...]
    target = object if datatype == BYTES else NUMPY_DTYPE_BY_DATATYPE[datatype]
    try:
        converted: np.ndarray = array.astype(target)
    except (ValueError, TypeError):
        raise ValueError(f"the values are not {datatype}: {value[:60]}") from None
    return converted


def _read_input_file(path: Path) -> np.ndarray:
    """``file.npy``, or ``file.json``: a list, or an object with ``data`` and, optionally, ``shape``."""
    try:
        if path.suffix == ".npy":
            loaded: np.ndarray = np.load(path, allow_pickle=False)
            return loaded
        document = orjson.loads(path.read_bytes())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except orjson.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    except ValueError as error:  # numpy: not an .npy file, or one holding Python objects
        raise ValueError(f"{path} is not a numeric .npy file: {error}") from None
    if not isinstance(document, dict):
        return np.asarray(document)
    if "data" not in document:
        raise ValueError(
            f'{path} holds an object without "data": expected a list, or {{"data": ..., "shape": ...}}'
        )
    try:
        array = np.asarray(document["data"])
        return array.reshape(document["shape"]) if "shape" in document else array
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None


def _sign(method: str, url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
    try:
        import botocore.session
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
    except ImportError:
        raise ClientError(
            0, "--sigv4 needs botocore: install the s3 extra (pip install -e '.[s3]')"
        ) from None

    session = botocore.session.get_session()
    try:
        credentials = session.get_credentials()
    except Exception as error:  # botocore's own: a profile that does not exist, a broken config file
        raise ClientError(0, f"no AWS credentials found for --sigv4: {error}") from None
    if credentials is None:
        raise ClientError(
            0,
            "no AWS credentials found for --sigv4: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE, or run where an instance role provides them",
        )
    match = _EXECUTE_API_HOST.search(url)
    region = (
        (match.group(1) if match else None)
        or os.environ.get("AWS_REGION")
        or session.get_config_variable("region")
    )
    if not region:
        raise ClientError(0, "--sigv4 cannot tell the region: set AWS_REGION")
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(credentials.get_frozen_credentials(), "execute-api", region).add_auth(request)
    return dict(request.headers.items())
