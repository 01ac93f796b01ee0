"""A throw-away Orthanc PACS for the integration tests: free ports, a temp folder, a generated config.

Started only where the Debian ``orthanc`` binary exists (``make test`` installs it as root with apt);
the tests that need it skip cleanly elsewhere. STOW-RS tests also need the DICOMweb plugin
(Debian ``orthanc-dicomweb``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins"))


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc")


def dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb*.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: its AE title, DICOM port, REST base URL and process."""

    aet: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str) -> object:
        response = requests.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, data: bytes | str) -> object:
        response = requests.post(self.url + path, data=data, timeout=30)
        response.raise_for_status()
        return response.json()

    def upload(self, path: Path) -> str:
        """Store a file over REST (independent of the code under test); returns Orthanc's instance id."""
        return str(self.post("/instances", path.read_bytes())["ID"])

    def lookup_instance(self, sop_instance_uid: str) -> str | None:
        hits = self.post("/tools/lookup", sop_instance_uid)
        ids = [h["ID"] for h in hits if h["Type"] == "Instance"]
        return ids[0] if ids else None

    def instance_file(self, orthanc_id: str) -> bytes:
        response = requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30)
        response.raise_for_status()
        return response.content

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A test CA and a server and a client certificate it signed (for 127.0.0.1), with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=xraytriage-test-ca",
    )
    out = {"ca": folder / "ca.crt"}
    for name in ("server", "client"):
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
        out[name], out[f"{name}_key"] = folder / f"{name}.crt", folder / f"{name}.key"
    return out


def tls_config(certs: dict[str, Path]) -> dict[str, object]:
    """Orthanc's DICOM TLS settings: its certificate, and mutual TLS with clients signed by the CA."""
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(certs["server"]),
        "DicomTlsPrivateKey": str(certs["server_key"]),
        "DicomTlsTrustedCertificates": str(certs["ca"]),
        "DicomTlsRemoteCertificateRequired": True,
    }


def start_orthanc(
    folder: Path, aet: str = "ORTHANC", timeout_s: float = 60.0, extra: dict[str, object] | None = None
) -> Orthanc:
    """Write a config into ``folder`` and start Orthanc on free ports; wait until REST answers."""
    binary = orthanc_binary()
    assert binary is not None
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    plugin = dicomweb_plugin()
    config = {
        "Name": "xraytriage-tests",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "Plugins": [str(plugin)] if plugin else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "LuaScripts": [],
        "StorageCompression": False,
        **(extra or {}),
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=1))
    log = folder / "orthanc.log"
    with open(log, "wb") as fh:
        process = subprocess.Popen(
            [binary, str(config_path)], cwd=folder, stdout=fh, stderr=subprocess.STDOUT
        )
    server = Orthanc(aet, dicom_port, http_port, process, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            server.get("/system")
            return server
        except requests.RequestException:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within {timeout_s} s: {log.read_text()[-2000:]}")
