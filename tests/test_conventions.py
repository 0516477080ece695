"""Python's storage conventions (issue 20): a StorageFailure is an OSError, refused access is
also a PermissionError, a full disk carries errno.ENOSPC -- on every backend, from the real
kernel or server where one can be made to say it; adlfs's account-in-URL forms; py.typed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import virnucpro_store as vs
from virnucpro_store.backends.objectstore import RetryPolicy
from virnucpro_store.backends.objectstore_io import ErrorKind

ROOT = Path(__file__).resolve().parents[1]


def test_the_hierarchy_follows_oserror():
    assert issubclass(vs.StorageFailure, OSError)
    assert issubclass(vs.ObjectChanged, OSError)
    assert issubclass(vs.AccessDenied, PermissionError)
    assert issubclass(vs.AccessDenied, vs.StorageFailure)
    exc = vs.StorageFailure("s3://b/k: disk full", key="k", url="s3://b/k", errno=errno.ENOSPC)
    # the message stays the message (OSError's __str__ would say "[Errno 28] ...")
    assert str(exc) == "s3://b/k: disk full" and exc.strerror == os.strerror(errno.ENOSPC)
    assert vs.AccessDenied("x").errno == errno.EACCES
    assert vs.StorageFailure("x").errno is None


# a full disk (ENOSPC from /dev/full, the real kernel error): test_local.py's
# test_a_full_disk_is_a_storage_failure_at_the_backend_edge checks errno and OSError


def _refused_root(tmp_path: Path) -> Path:
    """A folder where creating a file is refused with EACCES by the kernel."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    # root bypasses file modes; sysfs still refuses to create files (EACCES)
    try:
        os.close(os.open("/sys/vnps-probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except PermissionError:
        return Path("/sys")
    except OSError as exc:
        pytest.skip(f"no folder here refuses root with EACCES (/sys: {exc})")
    os.unlink("/sys/vnps-probe")
    pytest.skip("sysfs let root create a file")


def test_local_access_refused_is_a_permission_error(tmp_path):
    store = vs.open_store(_refused_root(tmp_path))
    with pytest.raises(PermissionError) as err:
        store.save_bytes(b"x" * 10, "vnps-refused.pt", validate=None)
    assert isinstance(err.value, vs.AccessDenied)
    assert err.value.errno in (errno.EACCES, errno.EPERM) and err.value.strerror
    assert "permission refused" in str(err.value)


def test_s3_refused_access_is_a_permission_error():
    """SeaweedFS with an IAM config: a read-only identity's write and a wrong secret are both
    refused by the server (AccessDenied / SignatureDoesNotMatch)."""
    from helpers import require_seaweedfs
    from s3server import REGION, SeaweedFS, identity

    require_seaweedfs()
    with SeaweedFS(identities=[identity("reader", "vnps-reader", "reader-secret",
                                        ["Read", "List"])]) as server:
        import boto3

        boto3.client("s3", **server.client_kwargs()).create_bucket(Bucket="vnps-acl")
        base = {"endpoint_url": server.endpoint_url, "retries": 0,
                "client_kwargs": {"region_name": REGION}, "skip_instance_cache": True}
        for options in ({"key": "vnps-reader", "secret": "reader-secret"},
                        {"key": "vnps-reader", "secret": "not-the-secret"}):
            store = vs.open_store("s3://vnps-acl/p", **base, **options)
            with pytest.raises(PermissionError) as err:
                store.save_bytes(b"x" * 10, "k.bin", validate=None)
            assert isinstance(err.value, vs.AccessDenied) and err.value.errno == errno.EACCES
            assert "permission refused" in str(err.value), str(err.value)


def test_azure_wrong_key_is_a_permission_error(azurite):
    from azure_fixtures import ACCOUNT, ACCOUNT_KEY

    store = vs.open_store(azurite.fresh_url(), account_name=ACCOUNT, retries=0,
                          account_key=ACCOUNT_KEY.replace("Eby8", "Xby8"),
                          account_url=azurite.endpoint)
    with pytest.raises(PermissionError) as err:
        store.load("k.pt")
    assert isinstance(err.value, vs.AccessDenied) and "refused" in str(err.value)


@pytest.mark.parametrize("kind,cls,code", [
    (ErrorKind.DENIED, vs.AccessDenied, errno.EACCES),
    (ErrorKind.CREDENTIALS, vs.AccessDenied, errno.EACCES),
    (ErrorKind.NO_SPACE, vs.StorageFailure, errno.ENOSPC),
    (ErrorKind.OTHER, vs.StorageFailure, None),
])
@pytest.mark.parametrize("medium", ["s3", "gs", "az"])
def test_every_object_store_translates_denied_and_full(medium, kind, cls, code, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    if medium == "s3":
        from virnucpro_store.backends.s3 import S3Backend

        client = S3Backend("bk/p", key="k", secret="s").client
    elif medium == "gs":
        from virnucpro_store.backends.gcs import GCSClient

        client = GCSClient("bk", "p/", "gs://bk/p", retry=RetryPolicy(), request_timeout=1,
                           fs_options={"token": "anon"})
    else:
        from virnucpro_store.backends.azure import AzureBackend

        client = AzureBackend("bk/p", account_name="acct", anon=True).client
    exc = client.translate(kind, "what", "put", "k.pt", "exists", 0)
    assert type(exc) is cls and exc.errno == code and isinstance(exc, OSError)
    assert exc.key == "k.pt" and exc.url.endswith("bk/p/k.pt")


def test_507_insufficient_storage_means_no_space():
    import botocore.exceptions

    from virnucpro_store.backends import gcs
    from virnucpro_store.backends.azure import client as azure_client
    from virnucpro_store.backends.s3 import client as s3_client

    for code, status in (("XMinioStorageFull", 507), ("507", 507)):
        err = botocore.exceptions.ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Put")
        assert s3_client.classify(err)[0] is ErrorKind.NO_SPACE
    assert gcs.client.classify_status(507) is ErrorKind.NO_SPACE
    assert azure_client.kind_of(azure_client.ERROR_KINDS, status="507") is ErrorKind.NO_SPACE


# -- adlfs's account-in-URL forms --------------------------------------------------------------

@pytest.mark.parametrize("url,container,root,account,host", [
    ("abfs://features@labacct.dfs.core.windows.net/run7", "features", "run7/", "labacct",
     "labacct.blob.core.windows.net"),
    ("abfss://features@labacct.dfs.core.windows.net/run7/a/", "features", "run7/a/", "labacct",
     "labacct.blob.core.windows.net"),
    ("az://features@labacct.blob.core.windows.net/run7", "features", "run7/", "labacct",
     "labacct.blob.core.windows.net"),
    ("az://features@labacct.blob.core.windows.net", "features", "", "labacct",
     "labacct.blob.core.windows.net"),
    ("abfs://c@acct.dfs.core.chinacloudapi.cn/p", "c", "p/", "acct",
     "acct.blob.core.chinacloudapi.cn"),
    ("az://features/run7", "features", "run7/", None, None),
])
def test_adlfs_url_forms(url, container, root, account, host, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    from virnucpro_store.backends.azure.client import split_account
    from virnucpro_store.registry import parse_url

    parsed = parse_url(url)
    assert parsed.scheme == "az"
    bare, options = split_account(parsed.location, {})
    assert bare.split("/", 1)[0] == container
    assert options.get("account_name") == account and options.get("account_host") == host
    backend = vs.open_store(url, account_name=account or "x", anon=True).backend
    assert (backend.container, backend.root) == (container, root)
    # the store's URL keeps the account, so that it reopens the same place
    assert vs.open_store(backend.url, account_name=account or "x",
                         anon=True).backend.url == backend.url
    if account:
        with pytest.raises(vs.StorageFailure, match="names the account"):
            vs.open_store(url, account_name="another", anon=True)


def test_the_account_in_the_url_is_the_one_used(azurite, monkeypatch):
    from azure_fixtures import ACCOUNT, ACCOUNT_KEY

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    prefix = azurite.fresh_url().split("/", 3)[3]
    url = f"abfs://{azurite.container}@{ACCOUNT}.dfs.core.windows.net/{prefix}"
    # no account_name: an account key needs one, so it must come from the URL
    store = vs.open_store(url, account_key=ACCOUNT_KEY, account_url=azurite.endpoint)
    store.save({"v": 7}, "k.pt")
    assert store.url.startswith(f"az://{azurite.container}@{ACCOUNT}.dfs.core.windows.net/")
    plain = vs.open_store(f"az://{azurite.container}/{prefix}", **azurite.storage_options())
    assert plain.load("k.pt") == {"v": 7}


# -- py.typed --------------------------------------------------------------------------------

def test_py_typed_is_shipped_in_the_wheel(tmp_path):
    """The marker is in the source and in a wheel built from it (PEP 561)."""
    assert (ROOT / "src" / "virnucpro_store" / "py.typed").is_file()
    tree = tmp_path / "tree"  # a copy: an in-tree build would leave build/ in the checkout
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    def build(*isolation: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
                               "-q", "-w", str(tmp_path), str(tree)],
                              capture_output=True, text=True, timeout=300)

    # with this environment's setuptools (>= 70 builds wheels itself: the dev install has
    # it); else in pip's isolated build environment, from the index
    done = build("--no-build-isolation")
    if done.returncode != 0 and "bdist_wheel" in done.stderr:
        done = build()
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("virnucpro_store-*.whl")
    assert "virnucpro_store/py.typed" in zipfile.ZipFile(wheel).namelist()
