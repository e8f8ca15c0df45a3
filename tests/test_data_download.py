"""The downloader against a loopback fake mirror with faults; archive extraction refuses path traversal."""

import hashlib
import io
import json
import multiprocessing
import os
import signal
import tarfile
import time
import zipfile

import pytest

from conftest_data import fake_mirror, image_bytes  # noqa: F401 (fixture)
from nstlab.data.download import MANIFEST_NAME, DownloadSummary, RemoteFile, download_all, extract_archive
from nstlab.data.images import load_rgb
from nstlab.errors import DownloadError

FAST = dict(retries=2, backoff_s=0.01, timeout_s=2.0, progress=False)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(mirror, n_files: int, size: int = 50_000) -> dict[str, bytes]:
    files = {f"img{i}.bin": os.urandom(size) for i in range(n_files)}
    for name, data in files.items():
        mirror.add(name, data)
    return files


def remote(mirror, name: str, data: bytes | None = None) -> RemoteFile:
    return RemoteFile(mirror.url(name), name, sha256(data) if data is not None else None)


def names_in(directory) -> set[str]:
    return {path.name for path in directory.rglob("*") if path.is_file()}


def test_full_download_writes_files_and_manifest(fake_mirror, tmp_path):
    files = serve(fake_mirror, 3)
    remotes = [
        remote(fake_mirror, "img0.bin", files["img0.bin"]),
        remote(fake_mirror, "img1.bin"),
        RemoteFile(fake_mirror.url("img2.bin"), "sub/dir/img2.bin"),
    ]
    summary = download_all(remotes, tmp_path, workers=3, **FAST)
    assert summary.ok and summary.downloaded == ("img0.bin", "img1.bin", "sub/dir/img2.bin")
    assert (tmp_path / "sub/dir/img2.bin").read_bytes() == files["img2.bin"]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["img1.bin"] == {
        "sha256": sha256(files["img1.bin"]),
        "size": 50_000,
        "url": fake_mirror.url("img1.bin"),
    }
    assert not any(name.endswith(".part") for name in names_in(tmp_path))


def test_dropped_connection_resumes_with_a_range_request(fake_mirror, tmp_path):
    data = serve(fake_mirror, 1, size=200_000)["img0.bin"]
    fake_mirror.fail("img0.bin", "drop")
    summary = download_all([remote(fake_mirror, "img0.bin", data)], tmp_path, **FAST)
    assert summary.ok
    assert fake_mirror.requests_for("img0.bin") == [None, "bytes=100000-"]
    assert fake_mirror.bytes_sent < 2 * len(data)
    assert (tmp_path / "img0.bin").read_bytes() == data


def test_server_ignoring_the_range_restarts_the_file(fake_mirror, tmp_path):
    data = serve(fake_mirror, 1)["img0.bin"]
    fake_mirror.fail("img0.bin", "drop", "ignore_range")
    assert download_all([remote(fake_mirror, "img0.bin", data)], tmp_path, **FAST).ok
    assert fake_mirror.requests_for("img0.bin") == [None, "bytes=25000-"]
    assert (tmp_path / "img0.bin").read_bytes() == data


def test_wrong_checksum_is_refetched(fake_mirror, tmp_path):
    data = serve(fake_mirror, 1)["img0.bin"]
    fake_mirror.fail("img0.bin", "corrupt")
    assert download_all([remote(fake_mirror, "img0.bin", data)], tmp_path, **FAST).ok
    assert len(fake_mirror.requests_for("img0.bin")) == 2
    assert (tmp_path / "img0.bin").read_bytes() == data


def test_persistently_wrong_checksum_is_reported_and_never_kept(fake_mirror, tmp_path):
    data = serve(fake_mirror, 1)["img0.bin"]
    fake_mirror.fail("img0.bin", "corrupt", "corrupt", "corrupt")
    summary = download_all([remote(fake_mirror, "img0.bin", data)], tmp_path, **FAST)
    assert (
        "sha256 mismatch" in summary.failed["img0.bin"] and "after 3 attempts" in summary.failed["img0.bin"]
    )
    assert names_in(tmp_path) == {MANIFEST_NAME, ".download.lock"}


def test_404_is_missing_at_once_without_retries(fake_mirror, tmp_path):
    summary = download_all([RemoteFile(fake_mirror.url("absent.jpg"), "absent.jpg")], tmp_path, **FAST)
    assert "HTTP 404" in summary.missing["absent.jpg"] and "absent.jpg" in summary.missing["absent.jpg"]
    assert not summary.failed and not summary.ok
    assert len(fake_mirror.requests_for("absent.jpg")) == 1
    assert not (tmp_path / "absent.jpg").exists()
    assert "1 missing on the server" in summary.describe() and "HTTP 404" in summary.describe()


def test_403_is_a_failure_not_a_missing_file(fake_mirror, tmp_path):
    fake_mirror.add("secret.jpg", b"x")
    fake_mirror.fail("secret.jpg", "403")
    summary = download_all([RemoteFile(fake_mirror.url("secret.jpg"), "secret.jpg")], tmp_path, **FAST)
    assert "HTTP 403" in summary.failed["secret.jpg"] and not summary.missing


def decodes(path):
    load_rgb(path)


def test_bytes_that_do_not_decode_are_refetched_before_the_rename(fake_mirror, tmp_path):
    data = image_bytes(seed=3)
    fake_mirror.add("a.jpg", data)
    fake_mirror.fail("a.jpg", "corrupt")  # same length, no checksum known: only a decode can tell
    summary = download_all([RemoteFile(fake_mirror.url("a.jpg"), "a.jpg")], tmp_path, verify=decodes, **FAST)
    assert summary.downloaded == ("a.jpg",) and len(fake_mirror.requests_for("a.jpg")) == 2
    assert (tmp_path / "a.jpg").read_bytes() == data
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["a.jpg"]["verified"] is True


def test_bytes_that_never_decode_count_as_missing_and_are_never_kept(fake_mirror, tmp_path):
    fake_mirror.add("a.jpg", image_bytes(seed=3))
    fake_mirror.fail("a.jpg", "corrupt", "corrupt", "corrupt")
    summary = download_all([RemoteFile(fake_mirror.url("a.jpg"), "a.jpg")], tmp_path, verify=decodes, **FAST)
    assert "unusable bytes" in summary.missing["a.jpg"] and "after 3 attempts" in summary.missing["a.jpg"]
    assert names_in(tmp_path) == {MANIFEST_NAME, ".download.lock"}
    assert "a.jpg" not in json.loads((tmp_path / MANIFEST_NAME).read_text())


def test_a_file_on_disk_never_verified_is_verified_before_it_is_skipped(fake_mirror, tmp_path):
    data = image_bytes(seed=4)
    fake_mirror.add("a.jpg", data)
    fake_mirror.fail("a.jpg", "corrupt")
    download_all([RemoteFile(fake_mirror.url("a.jpg"), "a.jpg")], tmp_path, **FAST)  # no verify: kept as is
    assert (tmp_path / "a.jpg").read_bytes() != data
    fake_mirror.requests.clear()
    summary = download_all([RemoteFile(fake_mirror.url("a.jpg"), "a.jpg")], tmp_path, verify=decodes, **FAST)
    assert summary.downloaded == ("a.jpg",) and (tmp_path / "a.jpg").read_bytes() == data
    fake_mirror.requests.clear()
    assert download_all(
        [RemoteFile(fake_mirror.url("a.jpg"), "a.jpg")], tmp_path, verify=decodes, **FAST
    ).skipped == ("a.jpg",)
    assert fake_mirror.requests == []


# -- the server's own MD5 (S3 ETag, Content-MD5) -----------------------------------------------


def flipped_in_the_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def serve_image(mirror, checksum: str | None, *faults: str) -> tuple[RemoteFile, bytes]:
    """One JPEG with no sha256 known, so only a decode or the server's checksum can judge it."""
    data = image_bytes(seed=5)
    mirror.add("a.jpg", data)
    mirror.checksum = checksum
    mirror.fail("a.jpg", *faults)
    return RemoteFile(mirror.url("a.jpg"), "a.jpg"), data


def test_a_flipped_byte_decodes_so_without_a_checksum_it_is_accepted(fake_mirror, tmp_path):
    """The fault the checksums are for: invisible to the decode, and nothing changes without them."""
    file, data = serve_image(fake_mirror, None, "flip")
    summary = download_all([file], tmp_path, verify=decodes, **FAST)
    assert summary.downloaded == ("a.jpg",) and len(fake_mirror.requests_for("a.jpg")) == 1
    assert (tmp_path / "a.jpg").read_bytes() == flipped_in_the_middle(data)


@pytest.mark.parametrize("checksum", ["etag", "content-md5"])
def test_a_flipped_byte_is_caught_by_the_servers_md5_and_fetched_again(fake_mirror, tmp_path, checksum):
    file, data = serve_image(fake_mirror, checksum, "flip")
    summary = download_all([file], tmp_path, verify=decodes, **FAST)
    assert summary.downloaded == ("a.jpg",) and len(fake_mirror.requests_for("a.jpg")) == 2
    assert (tmp_path / "a.jpg").read_bytes() == data


@pytest.mark.parametrize("checksum", ["multipart-etag", "weak-etag"])
def test_etags_that_are_not_the_files_md5_are_ignored(fake_mirror, tmp_path, checksum):
    file, data = serve_image(fake_mirror, checksum)
    summary = download_all([file], tmp_path, verify=decodes, **FAST)
    assert summary.downloaded == ("a.jpg",) and len(fake_mirror.requests_for("a.jpg")) == 1
    assert (tmp_path / "a.jpg").read_bytes() == data


def test_a_copy_that_never_matches_its_etag_is_missing_and_never_kept(fake_mirror, tmp_path):
    file, _ = serve_image(fake_mirror, "etag", "flip", "flip", "flip")
    summary = download_all([file], tmp_path, verify=decodes, **FAST)
    reason = summary.missing["a.jpg"]
    assert "MD5 mismatch with the server's ETag" in reason and "after 3 attempts" in reason
    assert names_in(tmp_path) == {MANIFEST_NAME, ".download.lock"}


@pytest.mark.parametrize("checksum", ["etag", "content-md5"])
def test_a_resumed_download_passes_the_servers_md5(fake_mirror, tmp_path, checksum):
    """A 206's ETag is the whole object's MD5, its Content-MD5 the range's: both hold for good bytes."""
    data = serve(fake_mirror, 1, size=200_000)["img0.bin"]
    fake_mirror.checksum = checksum
    fake_mirror.fail("img0.bin", "drop")
    assert download_all([remote(fake_mirror, "img0.bin")], tmp_path, **FAST).ok
    assert fake_mirror.requests_for("img0.bin") == [None, "bytes=100000-"]
    assert (tmp_path / "img0.bin").read_bytes() == data


def test_a_corrupt_part_from_an_earlier_run_fails_the_etag_and_is_fetched_whole(fake_mirror, tmp_path):
    """The ETag is checked against the whole file, the bytes already on disk included."""
    data = serve(fake_mirror, 1, size=200_000)["img0.bin"]
    fake_mirror.checksum = "etag"
    (tmp_path / "img0.bin.part").write_bytes(flipped_in_the_middle(data[:100_000]))
    assert download_all([remote(fake_mirror, "img0.bin")], tmp_path, **FAST).ok
    assert fake_mirror.requests_for("img0.bin") == ["bytes=100000-", None]
    assert (tmp_path / "img0.bin").read_bytes() == data


@pytest.mark.parametrize("checksum", ["etag", "content-md5"])
def test_a_mirror_flipping_bytes_in_a_third_of_its_responses_gets_no_corrupt_image_in(
    fake_mirror, tmp_path, checksum
):
    images = {f"{seed}.jpg": image_bytes(seed=seed) for seed in range(60)}
    for name, data in images.items():
        fake_mirror.add(name, data)
    fake_mirror.checksum, fake_mirror.flip_rate = checksum, 0.3
    remotes = [RemoteFile(fake_mirror.url(name), name) for name in images]
    summary = download_all(remotes, tmp_path, verify=decodes, workers=4, **{**FAST, "retries": 4})
    corrupt = [name for name in summary.downloaded if (tmp_path / name).read_bytes() != images[name]]
    assert corrupt == [] and len(fake_mirror.requests) > len(images)  # flips happened, none got in
    assert set(summary.downloaded) | set(summary.missing) == images.keys() and not summary.failed
    assert all("MD5 mismatch" in reason for reason in summary.missing.values())


def test_server_errors_are_retried_with_backoff(fake_mirror, tmp_path):
    data = serve(fake_mirror, 1)["img0.bin"]
    fake_mirror.fail("img0.bin", "500", "500")
    started = time.perf_counter()
    summary = download_all(
        [remote(fake_mirror, "img0.bin")], tmp_path, retries=3, backoff_s=0.1, timeout_s=2.0, progress=False
    )
    assert summary.ok and (tmp_path / "img0.bin").read_bytes() == data
    assert len(fake_mirror.requests_for("img0.bin")) == 3
    assert time.perf_counter() - started >= 0.1 + 0.2  # waited backoff_s·2^0 + backoff_s·2^1


def test_stalled_server_times_out(fake_mirror, tmp_path):
    serve(fake_mirror, 1)
    fake_mirror.fail("img0.bin", "stall")
    started = time.perf_counter()
    summary = download_all(
        [remote(fake_mirror, "img0.bin")], tmp_path, retries=0, timeout_s=0.5, progress=False
    )
    assert time.perf_counter() - started < 3
    assert "timed out" in summary.failed["img0.bin"]
    assert not (tmp_path / "img0.bin").exists()


def test_rerun_skips_verified_files_without_any_request(fake_mirror, tmp_path):
    files = serve(fake_mirror, 3)
    remotes = [
        remote(fake_mirror, "img0.bin", files["img0.bin"]),
        remote(fake_mirror, "img1.bin"),
        remote(fake_mirror, "img2.bin"),
    ]
    download_all(remotes, tmp_path, **FAST)
    fake_mirror.requests.clear()
    summary = download_all(remotes, tmp_path, **FAST)
    assert summary.skipped == ("img0.bin", "img1.bin", "img2.bin") and not summary.downloaded
    assert fake_mirror.requests == []


def test_file_changed_on_disk_is_refetched(fake_mirror, tmp_path):
    data = serve(fake_mirror, 1)["img0.bin"]
    download_all([remote(fake_mirror, "img0.bin")], tmp_path, **FAST)
    (tmp_path / "img0.bin").write_bytes(b"x" * len(data))  # same size, other bytes
    summary = download_all([remote(fake_mirror, "img0.bin")], tmp_path, **FAST)
    assert summary.downloaded == ("img0.bin",)
    assert (tmp_path / "img0.bin").read_bytes() == data


def test_unsafe_file_names_are_refused(tmp_path):
    with pytest.raises(DownloadError, match="not a safe file name"):
        download_all([RemoteFile("http://127.0.0.1:9/x", "../escape.jpg")], tmp_path, progress=False)


def _download_noting_the_interrupt(remotes, target_dir, interrupted_marker):
    """download_all in a child process; its Ctrl-C handler first leaves a file the test waits for."""

    def interrupted(signum, frame):
        interrupted_marker.touch()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    download_all(remotes, target_dir, retries=0, timeout_s=600.0, progress=False)


def wait_for(condition, what: str, child) -> None:
    """Poll a condition the child makes true; fail at once if the child died first."""
    deadline = time.monotonic() + 120
    while not condition():
        assert child.is_alive(), f"the child exited ({child.exitcode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within 120 s"
        time.sleep(0.01)


def test_interrupt_leaves_a_resumable_part_and_no_final_file(fake_mirror, tmp_path):
    """Ordered by events, not timing: the mirror sends half the file and holds the connection
    open; the test interrupts the child once that half is on disk, and lets the mirror hang up
    only once the child has taken the interrupt, so the download can neither finish nor time out first."""
    data = serve(fake_mirror, 1, size=100_000)["img0.bin"]
    fake_mirror.fail("img0.bin", "hang")
    part, marker = tmp_path / "img0.bin.part", tmp_path / "interrupted"
    child = multiprocessing.get_context("spawn").Process(
        target=_download_noting_the_interrupt,
        args=([remote(fake_mirror, "img0.bin", data)], tmp_path, marker),
    )
    child.start()
    wait_for(lambda: part.is_file() and part.stat().st_size == 50_000, "half the file in the .part", child)
    os.kill(child.pid, signal.SIGINT)
    wait_for(marker.is_file, "interrupt handled", child)
    fake_mirror.released.set()  # the worker's read returns; download_all re-raises the interrupt
    child.join(120)
    assert child.exitcode not in (0, None)
    assert not (tmp_path / "img0.bin").exists()
    assert part.stat().st_size == 50_000

    assert download_all([remote(fake_mirror, "img0.bin", data)], tmp_path, **FAST).ok
    assert fake_mirror.requests_for("img0.bin")[-1] == "bytes=50000-"
    assert (tmp_path / "img0.bin").read_bytes() == data


def test_two_processes_share_a_target_dir_safely(fake_mirror, tmp_path):
    files = serve(fake_mirror, 6, size=100_000)
    fake_mirror.delay_s = 0.3  # the first process is still busy when the second starts
    remotes = [remote(fake_mirror, name) for name in files]
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=download_all,
            args=(remotes, tmp_path),
            kwargs=dict(workers=2, retries=0, timeout_s=5.0, progress=False),
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert all((tmp_path / name).read_bytes() == data for name, data in files.items())
    assert sorted(path for path, _ in fake_mirror.requests) == sorted(files)  # the second process skipped all
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()).keys() == files.keys()


def test_summary_with_failures_does_not_raise():
    summary = DownloadSummary(downloaded=("a",), failed={"b": "b: HTTP 404"})
    assert not summary.ok and summary.describe().splitlines() == [
        "1 downloaded (0 bytes), 0 already present, 1 failed",
        "  b: HTTP 404",
    ]


# -- archives --------------------------------------------------------------------------------


def zip_with(tmp_path, member: str):
    path = tmp_path / "archive.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("ok/readme.txt", "fine")
        bundle.writestr(member, "payload")
    return path


def tar_with(tmp_path, member: tarfile.TarInfo, data: bytes = b""):
    path = tmp_path / "archive.tar.gz"
    with tarfile.open(path, "w:gz") as bundle:
        member.size = len(data)
        bundle.addfile(member, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt"])
def test_zip_members_escaping_the_target_are_refused(tmp_path, member):
    target = tmp_path / "out"
    with pytest.raises(DownloadError, match="outside the target dir"):
        extract_archive(zip_with(tmp_path, member), target)
    assert not (tmp_path / "evil.txt").exists() and not (target / "ok").exists()


def test_tar_member_with_dotdot_is_refused(tmp_path):
    with pytest.raises(DownloadError, match="'../evil.txt'"):
        extract_archive(tar_with(tmp_path, tarfile.TarInfo("../evil.txt"), b"x"), tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_tar_symlink_pointing_out_is_refused(tmp_path):
    link = tarfile.TarInfo("innocent")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(DownloadError, match="outside the target dir"):
        extract_archive(tar_with(tmp_path, link), tmp_path / "out")


def test_safe_archives_are_extracted(tmp_path):
    extract_archive(zip_with(tmp_path, "ok/image.jpg"), tmp_path / "from_zip")
    assert (tmp_path / "from_zip/ok/image.jpg").read_text() == "payload"
    extract_archive(tar_with(tmp_path, tarfile.TarInfo("inside/image.jpg"), b"jpg"), tmp_path / "from_tar")
    assert (tmp_path / "from_tar/inside/image.jpg").read_bytes() == b"jpg"


def test_non_archive_is_refused(tmp_path):
    path = tmp_path / "archive.zip"
    path.write_bytes(image_bytes())
    with pytest.raises(DownloadError, match="not a zip or tar"):
        extract_archive(path, tmp_path / "out")
