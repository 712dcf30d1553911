"""studio.wire.images: S3 and http(s) image readers, the S3 writer, and the allowed-prefix policy inside them."""

from __future__ import annotations

import base64
import http.server
import io
import threading

import pytest
from PIL import Image

from studio.aws import redact_url
from studio.engine import EngineError
from studio.testing.wire import FakeS3, gradient, png_b64, result_for
from studio.types import GenerationRequest, Limits, RequestError
from studio.wire import codec
from studio.wire.codec import Dialect
from studio.wire.images import RequestImages, S3Reader, S3Writer, URLReader

POLICY = ("s3://inputs/ok/", "s3://outbox/")


def decode(payload, fetch):
    invocation = codec.decode_invocation(payload, limits=Limits(), fetch=fetch)
    return invocation.request, invocation.dialect


def s3_images(s3, allowed=()) -> RequestImages:
    return RequestImages(s3=S3Reader(s3, allowed))


def test_s3_images_are_read_with_a_client_or_a_factory_called_only_when_needed():
    image = gradient(32, 32)
    raw = base64.b64decode(png_b64(image))
    s3 = FakeS3({("bucket", "in/cat.png"): raw})
    request, _ = decode({"prompt": "x", "input_image": "s3://bucket/in/cat.png"}, s3_images(s3))
    assert request.image.tobytes() == image.tobytes()
    made = []
    factory = lambda: made.append(1) or s3  # noqa: E731
    decode({"prompt": "x"}, s3_images(factory))
    assert made == []
    request, _ = decode({"prompt": "x", "input_image": "s3://bucket/in/cat.png"}, s3_images(factory))
    assert request.image.size == (32, 32) and made == [1]


def test_s3_errors_name_the_field():
    s3 = FakeS3()
    with pytest.raises(RequestError, match=r"^input_image: s3://bucket/missing.png does not exist"):
        decode({"prompt": "x", "input_image": "s3://bucket/missing.png"}, s3_images(s3))
    with pytest.raises(RequestError, match=r"^input_image: .*no object key"):
        decode({"prompt": "x", "input_image": "s3://bucket"}, s3_images(s3))


def test_access_denied_and_oversized_objects():
    class Denied(FakeS3):
        def get_object(self, Bucket, Key):  # noqa: N803
            error = Exception("An error occurred (AccessDenied)")
            error.response = {"Error": {"Code": "AccessDenied"}}
            raise error

    with pytest.raises(RequestError, match=r"^img: access to s3://bucket/a.png is denied \(AccessDenied\)"):
        S3Reader(Denied())("img", "s3://bucket/a.png")
    big = FakeS3({("bucket", "a.png"): b"0" * 101})
    with pytest.raises(RequestError, match="^img: .*the limit is 100"):
        S3Reader(big, max_bytes=100)("img", "s3://bucket/a.png")


@pytest.mark.parametrize(
    "uri",
    [
        "s3://secret/a.png",
        "s3://inputs-other/a.png",  # a bare bucket is not a prefix
        "s3://inputs/okay/a.png",
        "s3://inputs/ok/../../secret/a.png",  # no dot segments under a policy
        "s3://inputs/ok/./a.png",
    ],
)
def test_reads_outside_the_allowed_prefixes_are_refused_before_any_call(uri):
    s3 = FakeS3({("secret", "a.png"): b"x"})
    with pytest.raises(RequestError) as caught:
        S3Reader(s3, POLICY)("mask_image", uri)
    assert caught.value.field == "mask_image"
    assert "STUDIO_S3_ALLOWED_PREFIXES" in str(caught.value)
    assert s3.calls == []


def test_reads_inside_the_allowed_prefixes_and_without_a_policy_are_made():
    s3 = FakeS3({("inputs", "ok/a.png"): b"png", ("anything", "a.png"): b"any"})
    assert S3Reader(s3, POLICY)("img", "s3://inputs/ok/a.png") == b"png"
    assert S3Reader(s3)("img", "s3://anything/a.png") == b"any"


def test_writer_writes_pngs_under_the_location():
    request = GenerationRequest(prompt="x", width=64, height=48, count=2, seed=1)
    result = result_for(request)
    s3 = FakeS3()
    pngs = codec.encode_pngs(result)
    uris = S3Writer(s3).write("s3://out-bucket/renders", pngs, result.seeds)
    assert len(uris) == 2 and all(u.startswith("s3://out-bucket/renders/") and u.endswith(".png") for u in uris)
    assert uris[0].endswith("-0-1.png") and uris[1].endswith("-1-2.png")
    stored = s3.objects[("out-bucket", uris[0].split("/", 3)[3])]
    assert Image.open(io.BytesIO(stored)).info["parameters"] == result.infotexts[0]
    quick = codec.encode_result(result, Dialect.QUICK_KIT, uris=uris, pngs=pngs)
    back = codec.decode_result(quick, request, backend="sagemaker", fetch=S3Reader(s3))
    assert [i.tobytes() for i in back.images] == [i.tobytes() for i in result.images]


def test_writes_outside_the_allowed_prefixes_are_refused_before_any_call():
    s3 = FakeS3()
    writer = S3Writer(s3, POLICY)
    for location in ("s3://elsewhere/out", "s3://outbox-2/x", "s3://inputs/secret/", "s3://outbox/../elsewhere"):
        with pytest.raises(RequestError) as caught:
            writer.write(location, [b"png"], [1], field="output_s3uri")
        assert caught.value.field == "output_s3uri" and "STUDIO_S3_ALLOWED_PREFIXES" in str(caught.value)
        with pytest.raises(RequestError, match="^s3_output: .*STUDIO_S3_ALLOWED_PREFIXES"):
            writer.check(location)
    assert s3.calls == []
    writer.check("s3://outbox")  # the whole bucket
    writer.check("s3://inputs/ok")  # objects land under s3://inputs/ok/
    (uri,) = writer.write("s3://outbox", [b"png"], [7])
    assert uri.startswith("s3://outbox/") and s3.calls == [("put_object", "outbox", uri.split("/", 3)[3])]


def test_a_failed_write_is_an_engine_error_naming_the_object():
    class Broken(FakeS3):
        def put_object(self, **kwargs):
            error = Exception("An error occurred (NoSuchBucket)")
            error.response = {"Error": {"Code": "NoSuchBucket"}}
            raise error

    with pytest.raises(EngineError, match=r"^s3_output: could not write s3://nope-bucket/x/.*: NoSuchBucket$"):
        S3Writer(Broken()).write("s3://nope-bucket/x/", [b"png"], [1])


def test_request_images_without_readers_refuse_naming_the_field():
    images = RequestImages()
    with pytest.raises(RequestError, match="^img: .*no S3 client"):
        images("img", "s3://bucket/a.png")
    with pytest.raises(RequestError, match="^img: http.*disabled") as caught:
        images("img", "https://user:SECRET@host/a.png?token=SECRET")
    assert "SECRET" not in str(caught.value)


def test_http_image_only_when_allowed():
    raw = base64.b64decode(png_b64(gradient(16, 16)))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/cat.png" else 404)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    allowed = RequestImages(urls=URLReader())
    try:
        with pytest.raises(RequestError, match="^input_image: http"):
            decode({"prompt": "x", "input_image": url}, RequestImages(s3=S3Reader(FakeS3())))
        request, _ = decode({"prompt": "x", "input_image": url}, allowed)
        assert request.image.size == (16, 16)
        with pytest.raises(RequestError, match="HTTP 404"):
            decode({"prompt": "x", "input_image": url + "x"}, allowed)
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:secret/x@127.0.0.1:9/path?api_key=SECRET",
        "https://user:SECRET@host/x?X-Amz-Security-Token=SECRET#frag",
        "http://127.0.0.1:8080/invocations?token=SECRET",
    ],
)
def test_redact_url_drops_credentials_and_query(url):
    redacted = redact_url(url)
    assert "SECRET" not in redacted and "secret" not in redacted
    assert redacted.startswith(("http://", "https://"))
