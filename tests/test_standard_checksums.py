"""Checksums users can check with standard tools (issue 20, docs/checksums.md): a committed
run records, per file, the whole-object checksums its medium keeps (S3 ChecksumCRC32..., GCS
crc32c/md5Hash, Azure Content-MD5) or else the file's sha256; verify_run compares them. The
oracles are independent implementations: zlib's CRC-32, google-crc32c, hashlib, sha256sum."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import subprocess
import zlib

import pytest

import virnucpro_store as vs
from virnucpro_store.runs import manifest_key
from virnucpro_store.testing.samples import sample, to_bytes

MiB = 1 << 20


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _commit(store: vs.CheckpointStore, files: dict[str, bytes]) -> vs.Manifest:
    for name, data in files.items():
        store.save_bytes(data, f"run/{name}", validate=None)
    return store.commit_run("run")


def test_local_runs_record_the_sha256_that_sha256sum_prints(tmp_path):
    store = vs.open_store(tmp_path)
    data = to_bytes(sample("merged", 16))
    manifest = _commit(store, {"a.pt": data})
    want = hashlib.sha256(data).hexdigest()
    assert manifest.files["a.pt"].checksums == {"sha256": want}
    if shutil.which("sha256sum"):
        printed = subprocess.run(["sha256sum", str(tmp_path / "run" / "a.pt")],
                                 capture_output=True, text=True, check=True).stdout.split()[0]
        assert printed == want
    doc = json.loads(store.read_bytes(manifest_key("run")))
    assert doc["files"][0]["checksums"] == {"sha256": want}
    assert store.verify_run("run", deep=True).ok


def test_verify_compares_the_recorded_checksums_and_tolerates_their_absence(tmp_path):
    store = vs.open_store(tmp_path)
    _commit(store, {"a.pt": to_bytes(sample("merged", 16))})
    key = manifest_key("run")
    doc = json.loads(store.read_bytes(key))
    doc["files"][0]["checksums"] = {"sha256": "0" * 64}  # as if the file had changed
    store.save_bytes(json.dumps(doc).encode(), key, validate=None)
    assert store.verify_run("run").ok  # a sha256 costs a full read: deep only
    deep = store.verify_run("run", deep=True)
    assert not deep.ok and "sha256 differs" in deep.invalid["run/a.pt"].message
    del doc["files"][0]["checksums"]  # a manifest from before the field existed
    store.save_bytes(json.dumps(doc).encode(), key, validate=None)
    assert store.verify_run("run", deep=True).ok


def test_s3_records_the_servers_crc32_else_sha256(seaweedfs):
    s3_server = seaweedfs
    store = s3_server.factory()(part_size=5 * MiB)
    small = to_bytes(sample("merged", 4))
    large = to_bytes(sample("merged", 480))  # ~6.4 MB: a multipart upload
    assert len(large) > 5 * MiB
    manifest = _commit(store, {"small.pt": small, "large.pt": large})
    crc = _b64(zlib.crc32(small).to_bytes(4, "big"))
    # SeaweedFS (and moto) keep the CRC-32 botocore sent with a one-request upload, through the
    # publishing copy; a multipart upload's is composite (or absent): sha256 then
    assert store.info("run/small.pt").checksums == {"ChecksumCRC32": crc}
    assert manifest.files["small.pt"].checksums == {"ChecksumCRC32": crc}
    assert manifest.files["large.pt"].checksums == {"sha256": hashlib.sha256(large).hexdigest()}
    head = s3_server.client().head_object(Bucket=s3_server.bucket, ChecksumMode="ENABLED",
                                          Key=store.backend.client.path("run/small.pt"))
    assert head["ChecksumCRC32"] == crc  # what `aws s3api head-object` prints
    assert store.verify_run("run", deep=True).ok
    # the object replaced by other bytes of the same size: the CRC-32 tells, without deep
    other = bytearray(small)
    # the last byte of the first record's alignment padding (torch's 'FB' extra field): still
    # a valid checkpoint with the same ZIP directory checksum, but not the committed bytes
    name_len, extra_len = struct.unpack_from("<HH", other, 26)
    assert extra_len > 4
    other[30 + name_len + extra_len - 1] ^= 0x01
    store.save_bytes(bytes(other), "run/small.pt", validate=None)
    report = store.verify_run("run")
    assert not report.ok and "ChecksumCRC32 differs" in report.invalid["run/small.pt"].message


def test_gcs_records_crc32c_and_md5(gcs_server):
    google_crc32c = pytest.importorskip("google_crc32c")
    store = gcs_server.factory()()
    data = to_bytes(sample("merged", 4))
    manifest = _commit(store, {"a.pt": data})
    want = {"crc32c": _b64(google_crc32c.value(data).to_bytes(4, "big")),
            "md5Hash": _b64(hashlib.md5(data).digest())}
    assert manifest.files["a.pt"].checksums == want
    assert store.info("run/a.pt").checksums == want
    assert [i.checksums for i in store.backend.list_info("run/a.pt")] == [want]
    assert store.verify_run("run").ok


def test_azure_records_content_md5_else_sha256(azurite):
    store = azurite.factory()(part_size=4 * MiB)
    small = to_bytes(sample("merged", 4))
    large = to_bytes(sample("merged", 400))  # > one block: a block-list commit, no MD5
    manifest = _commit(store, {"small.pt": small, "large.pt": large})
    md5 = _b64(hashlib.md5(small).digest())
    assert manifest.files["small.pt"].checksums == {"Content-MD5": md5}
    assert store.info("run/small.pt").checksums == {"Content-MD5": md5}
    assert manifest.files["large.pt"].checksums == {"sha256": hashlib.sha256(large).hexdigest()}
    assert store.verify_run("run", deep=True).ok
