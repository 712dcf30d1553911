"""Where the studio is hosted, and what gradio's `launch()` needs for it: the path prefix behind a proxy, TLS, the URL
to open, and warnings about exposure.

- **SageMaker notebook instance** (`/opt/ml/metadata/resource-metadata.json` names a `notebook-instance/NAME` ARN):
  Jupyter's `jupyter-server-proxy` serves port P at `https://NAME.notebook.REGION.sagemaker.aws/proxy/P/` and strips
  `/proxy/P` before forwarding. Gradio must know that prefix (its root path), or the page loads unstyled and every
  component shows "Error". It is set automatically.
- **SageMaker Studio** (the same file, with `DomainId` and `AppType`): a JupyterLab space proxies port P at
  `/jupyterlab/default/proxy/P/`, a Code Editor space at `/codeeditor/default/ports/P/`, Studio Classic's Jupyter
  server at `/jupyter/default/proxy/P/` — each on the Studio domain's address. Set automatically too.
- `--root-path` / STUDIO_ROOT_PATH overrides the detection (an empty value turns the prefix off).
- **TLS**: `--tls-cert`/`--tls-key` become gradio's ssl options. A studio reachable by others over plain HTTP gets a
  warning that says how to add them.
- **Share link**: `--share` needs the internet (gradio's tunnel API and its frpc binary). Offline, gradio prints a
  notice and carries on without a link; here the start-up fails fast with a clear message instead.

Nothing here imports gradio: `plan()` reads settings and one small JSON file; app.py passes the options on.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from studio.config import ConfigError, Settings, sagemaker_metadata_file

logger = logging.getLogger(__name__)

# Gradio's share links start with a request to this host (gradio.networking.GRADIO_API_SERVER).
SHARE_API_HOST = "api.gradio.app"
SHARE_CHECK_SECONDS = 8.0
LOOPBACK_NAMES = ("localhost",)


class Place(StrEnum):
    """The SageMaker environments the studio recognises (from the resource metadata file)."""

    NOTEBOOK_INSTANCE = "notebook instance"
    STUDIO_JUPYTERLAB = "Studio JupyterLab space"
    STUDIO_CODE_EDITOR = "Studio Code Editor space"
    STUDIO_CLASSIC = "Studio Classic Jupyter server"
    STUDIO_KERNEL = "Studio Classic kernel app"  # kernels run in their own container: the proxy cannot reach them


# The path prefix each environment's proxy serves a local port under (the proxy strips it before forwarding).
_PREFIX = {
    Place.NOTEBOOK_INSTANCE: "/proxy/{port}",
    Place.STUDIO_JUPYTERLAB: "/jupyterlab/default/proxy/{port}",
    Place.STUDIO_CODE_EDITOR: "/codeeditor/default/ports/{port}",
    Place.STUDIO_CLASSIC: "/jupyter/default/proxy/{port}",
}
_STUDIO_APPS = {
    "JupyterLab": Place.STUDIO_JUPYTERLAB,
    "CodeEditor": Place.STUDIO_CODE_EDITOR,
    "JupyterServer": Place.STUDIO_CLASSIC,
    "KernelGateway": Place.STUDIO_KERNEL,
}


@dataclass(frozen=True)
class SageMakerHost:
    """A SageMaker environment the studio runs in, read from its resource metadata file."""

    place: Place
    name: str  # notebook instance name, or the Studio space (or app) name
    region: str | None = None
    domain_id: str | None = None

    def root_path(self, port: int) -> str | None:
        prefix = _PREFIX.get(self.place)
        return prefix.format(port=port) if prefix else None

    def url(self, port: int) -> str | None:
        """The address to open in a browser (for Studio, the domain's address: see the log message's hint)."""
        path = self.root_path(port)
        if path is None or not self.region:
            return None
        if self.place is Place.NOTEBOOK_INSTANCE:
            return f"https://{self.name}.notebook.{self.region}.sagemaker.aws{path}/"
        if self.domain_id:
            return f"https://{self.domain_id}.studio.{self.region}.sagemaker.aws{path}/"
        return None


def _region_from_arn(arn: str) -> str | None:
    parts = arn.split(":")  # arn:aws:sagemaker:REGION:ACCOUNT:RESOURCE
    if len(parts) < 6 or parts[0] != "arn" or not parts[3]:
        return None
    return parts[3]


def detect_sagemaker(metadata_file: Path | None = None) -> SageMakerHost | None:
    """The SageMaker environment described by /opt/ml/metadata/resource-metadata.json (None elsewhere).

    A notebook instance's file has `ResourceArn` `arn:aws:sagemaker:REGION:ACCOUNT:notebook-instance/NAME` and
    `ResourceName`; a Studio app's has `DomainId`, `SpaceName` and `AppType` (JupyterLab, CodeEditor, ...)."""
    path = metadata_file or sagemaker_metadata_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("could not read %s (%s): not detecting SageMaker", path, exc)
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        logger.warning("%s is not JSON (%s): not detecting SageMaker", path, exc)
        return None
    if not isinstance(meta, dict):
        return None
    arn = str(meta.get("ResourceArn") or "")
    region = _region_from_arn(arn)
    if meta.get("DomainId"):
        place = _STUDIO_APPS.get(str(meta.get("AppType") or ""))
        if place is None:
            logger.info("SageMaker Studio app type %r: no proxy prefix known, none set", meta.get("AppType"))
            return None
        name = str(meta.get("SpaceName") or meta.get("ResourceName") or "")
        return SageMakerHost(place, name, region, str(meta["DomainId"]))
    if ":notebook-instance/" in arn or meta.get("ResourceName"):
        name = str(meta.get("ResourceName") or arn.rsplit("/", 1)[-1])
        return SageMakerHost(Place.NOTEBOOK_INSTANCE, name, region)
    return None


def is_loopback(host: str) -> bool:
    """True for names and addresses only this machine reaches (as app.check_exposure decides)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class HostingPlan:
    """What app.launch passes to gradio (`launch_kwargs`) and says at start-up (`messages`, `warnings`)."""

    root_path: str | None = None
    tls: bool = False
    sagemaker: SageMakerHost | None = None
    launch_kwargs: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def announce(self) -> None:
        """Log the start-up messages (the URL to open) and warnings (exposure without TLS)."""
        for message in self.messages:
            logger.info("%s", message)
        for warning in self.warnings:
            logger.warning("%s", warning)


def _normalise_root_path(value: str) -> str:
    return "/" + value.strip().strip("/") if value.strip().strip("/") else ""


def plan(settings: Settings, *, metadata_file: Path | None = None, check_share: bool = True) -> HostingPlan:
    """The hosting options for `settings`: root path (given, or detected on SageMaker), TLS files (checked), the URL
    to open and exposure warnings. With `check_share`, a --share that cannot reach gradio's tunnel service is a
    ConfigError here, before anything is loaded or listening."""
    result = HostingPlan()
    result.sagemaker = detect_sagemaker(metadata_file)
    _plan_root_path(settings, result)
    _plan_tls(settings, result)
    _plan_messages(settings, result)
    if settings.share and check_share:
        check_share_reachable()
    return result


def _plan_root_path(settings: Settings, result: HostingPlan) -> None:
    host = result.sagemaker
    if settings.root_path is not None:
        result.root_path = _normalise_root_path(settings.root_path) or None
    elif host is not None:
        result.root_path = host.root_path(settings.port)
        if host.place is Place.STUDIO_KERNEL:
            result.warnings.append(
                "this is a SageMaker Studio Classic kernel app: Studio's Jupyter proxy cannot reach it. Start the "
                "studio from a System terminal (File > New > Terminal) of the Jupyter server instead"
            )
    if result.root_path:
        result.launch_kwargs["root_path"] = result.root_path


def _plan_tls(settings: Settings, result: HostingPlan) -> None:
    if settings.tls_cert is None or settings.tls_key is None:
        return
    for flag, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if not Path(path).is_file():
            raise ConfigError(f"{flag}: no such file: {path}")
    result.tls = True
    # ssl_verify=False only affects gradio's check of its own local URL at start-up (https://127.0.0.1:PORT), which
    # a certificate for the host's public name (or a self-signed one) never matches; clients still verify.
    result.launch_kwargs.update(
        ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key), ssl_verify=False
    )


def _plan_messages(settings: Settings, result: HostingPlan) -> None:
    host, port = result.sagemaker, settings.port
    detected = host is not None and result.root_path is not None and result.root_path == host.root_path(port)
    if detected and host is not None:
        where = f"SageMaker {host.place.value} {host.name}".rstrip()
        url = host.url(port)
        if host.place is Place.NOTEBOOK_INSTANCE and url:
            result.messages.append(f"{where}: open {url}")
        else:
            example = f" (e.g. {url})" if url else ""
            result.messages.append(
                f"{where}: open {result.root_path}/ on your Studio domain's address, the host your browser shows for "
                f"Studio{example}"
            )
    elif result.root_path:
        result.messages.append(f"serving under the path prefix {result.root_path}/ (the proxy in front strips it)")
    warning = exposure_warning(settings, tls=result.tls)
    if warning:
        result.warnings.append(warning)


def exposure_warning(settings: Settings, *, tls: bool) -> str | None:
    """A warning for a studio others can reach over plain HTTP (a share link is HTTPS already)."""
    if tls or is_loopback(settings.host):
        return None
    who = "the password and every image" if settings.auth else "every prompt and image"
    return (
        f"--host {settings.host} serves the studio over plain HTTP: {who} cross the network unencrypted. Add TLS with "
        "--tls-cert CERT.pem --tls-key KEY.pem (a certificate for this host's name, e.g. from your CA or Let's "
        "Encrypt; for a quick test: openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout key.pem -out "
        "cert.pem -subj /CN=HOSTNAME), or put an HTTPS proxy or load balancer in front"
    )


def check_share_reachable(host: str = SHARE_API_HOST, timeout: float = SHARE_CHECK_SECONDS, port: int = 443) -> None:
    """ConfigError unless `host`:`port` answers within `timeout` seconds (name lookup and TCP connect, bounded even
    when the resolver hangs). Offline, gradio would otherwise print a notice and run without a share link."""
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except BaseException as exc:  # reported below, in the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=probe, name="share-check", daemon=True)
    worker.start()
    worker.join(timeout)
    error = outcome[0] if outcome else TimeoutError(f"no answer within {timeout:.0f}s")
    if error is not None:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ConfigError(
            f"--share needs the internet (gradio's share service {host} and its tunnel client), but {host} cannot "
            f"be reached ({reason}). Without the internet, reach the studio over your network instead: "
            "--host 0.0.0.0 --auth USER:PASSWORD (with --tls-cert/--tls-key), or through Jupyter's proxy"
        )


def check_share_link(blocks: Any, settings: Settings) -> None:
    """After launch: gradio swallows a failed tunnel (no link, a printed notice). Fail loudly instead."""
    if settings.share and not getattr(blocks, "share_url", None):
        blocks.close()
        raise ConfigError(
            "--share: gradio could not create the share link (see its message above: the tunnel service or the frpc "
            "download failed). Check the internet connection, or use --host 0.0.0.0 --auth USER:PASSWORD instead"
        )
