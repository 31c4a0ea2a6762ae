"""What may be enqueued: files under the media roots (symlinks resolved) and http(s) URLs only."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ralf.core.files import file_sha256
from worker.sources import SourceRefused, check_source


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "media"
    outside = tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (root / "clip.mp4").write_bytes(b"video")
    (root / "sub").mkdir()
    (root / "sub" / "deep.mp4").write_bytes(b"video 2")
    (outside / "secret.mp4").write_bytes(b"secret")
    return root, outside


def test_file_under_root(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    source = check_source(str(root / "sub" / "deep.mp4"), [root])
    assert source.kind == "file" and source.location == str((root / "sub" / "deep.mp4").resolve())


def test_relative_path_inside_root(layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = layout
    monkeypatch.chdir(root / "sub")
    assert check_source("../clip.mp4", [root]).location == str(root / "clip.mp4")


def test_relative_path_escaping_root(layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = layout
    monkeypatch.chdir(root)
    with pytest.raises(SourceRefused, match="outside the media roots"):
        check_source("../private/secret.mp4", [root])


def test_symlink_out_of_root_is_refused(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    (root / "innocent.mp4").symlink_to(outside / "secret.mp4")
    with pytest.raises(SourceRefused, match="outside the media roots"):
        check_source(str(root / "innocent.mp4"), [root])


def test_symlink_within_root_is_accepted(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    (root / "alias.mp4").symlink_to(root / "sub" / "deep.mp4")
    assert check_source(str(root / "alias.mp4"), [root]).location == str(root / "sub" / "deep.mp4")


def test_prefix_sibling_is_not_inside(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media-private").mkdir()
    (tmp_path / "media-private" / "x.mp4").write_bytes(b"x")
    with pytest.raises(SourceRefused, match="outside"):
        check_source(str(tmp_path / "media-private" / "x.mp4"), [tmp_path / "media"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://example.com/a.mp4", "unsupported URL scheme 'ftp://'"),
        ("file:///etc/passwd", "unsupported URL scheme 'file://'"),
        ("s3://bucket/a.mp4", "unsupported URL scheme"),
        ("http:///nohost.mp4", "without a host"),
        ("", "empty input"),
    ],
)
def test_refused_urls(layout: tuple[Path, Path], text: str, message: str) -> None:
    with pytest.raises(SourceRefused, match=message):
        check_source(text, [layout[0]])


@pytest.mark.parametrize("url", ["http://example.com/a.mp4", "HTTPS://example.com/a.mp4?x=1"])
def test_http_urls_are_accepted_as_given(layout: tuple[Path, Path], url: str) -> None:
    source = check_source(url, [layout[0]])
    assert source.kind == "url" and source.location == url


def test_missing_file_and_directory(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with pytest.raises(SourceRefused, match="no such file"):
        check_source(str(root / "missing.mp4"), [root])
    with pytest.raises(SourceRefused, match="not a regular file"):
        check_source(str(root / "sub"), [root])


def test_no_media_roots_configured(layout: tuple[Path, Path]) -> None:
    with pytest.raises(SourceRefused, match="RALF_MEDIA_ROOTS"):
        check_source(str(layout[0] / "clip.mp4"), [])


def test_sha256_streams_whole_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 1 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


# Probing a file's duration is all enqueueing needs from the pipeline; it must not load torch.
PROBE_WITHOUT_TORCH = """
import json, sys
import pipeline.decode.probe
from worker.queue import probe_duration
info = pipeline.decode.probe.probe_video(sys.argv[1])
print(json.dumps({"duration": probe_duration(sys.argv[1]), "frames": info.num_frames,
                  "torch": "torch" in sys.modules}))
"""


def test_probing_at_enqueue_does_not_import_torch(face_clip_h264: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", PROBE_WITHOUT_TORCH, str(face_clip_h264)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,  # a loaded machine: importing PyAV under nice can take a while
        check=True,
    )
    probed = json.loads(result.stdout)
    assert probed["duration"] == pytest.approx(2.0, abs=0.1) and probed["frames"] == 24
    assert probed["torch"] is False


# --- URLs to internal addresses (SSRF) are refused at enqueue -----------------------------------------
# Checked with the rules alone: nothing here connects anywhere, and host names resolve only through
# the fake resolvers below.
def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"unexpected DNS lookup of {host!r}")


def fake_dns(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"fake resolver: unknown host {host}")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "127.0.0.1 is not a public address (loopback)"),
        ("http://localhost/a.mp4", "reserved for local hosts"),
        ("http://LOCALHOST./a.mp4", "reserved for local hosts"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:8080/a.mp4", "::1 is not a public address (loopback)"),
        ("http://0.0.0.0/a.mp4", "unspecified"),
        ("http://2130706433/a.mp4", "127.0.0.1 is not a public address"),
        ("http://0x7f.1/a.mp4", "127.0.0.1 is not a public address"),
        ("http://0177.0.0.1/a.mp4", "127.0.0.1 is not a public address"),
        ("http://10.0.0.1/a.mp4", "private"),
        ("http://192.168.1.10/a.mp4", "private"),
        ("http://100.64.0.1/a.mp4", "shared address space"),
        ("http://224.0.0.251/a.mp4", "multicast"),
        ("http://[::ffff:127.0.0.1]/a.mp4", "loopback: 127.0.0.1 embedded"),
        ("http://[fe80::1]/a.mp4", "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "reserved for local hosts"),
        ("http://printer.local/a.mp4", "reserved for local hosts"),
        ("http://192.0.0.8/a.mp4", "192.0.0.8 is not a public address (IETF protocol assignments"),
        ("http://[3fff::1]/a.mp4", "3fff::1 is not a public address (documentation"),
        ("http://[3fff:fff:ffff::1]/a.mp4", "documentation (3fff::/20)"),
    ],
)
def test_internal_addresses_are_refused(layout: tuple[Path, Path], url: str, message: str) -> None:
    from ralf.core.addresses import AddressPolicy

    with pytest.raises(SourceRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_source(url, [layout[0]], AddressPolicy(), no_dns)


def test_names_are_checked_on_what_they_resolve_to(layout: tuple[Path, Path]) -> None:
    from ralf.core.addresses import AddressPolicy

    resolver = fake_dns({"sneaky.example": ["127.0.0.1"], "cdn.example": ["93.184.216.34", "2606:2800:220:1::1"]})
    with pytest.raises(SourceRefused, match="sneaky.example.*its address is not allowed") as refused:
        check_source("https://sneaky.example/a.mp4", [layout[0]], AddressPolicy(), resolver)
    assert "127.0.0.1" not in str(refused.value)  # what an internal name resolves to is not told
    assert check_source("https://cdn.example/a.mp4", [layout[0]], AddressPolicy(), resolver).kind == "url"
    # not resolvable where enqueue runs: accepted, the worker checks the address it connects to
    assert check_source("https://elsewhere.example/a.mp4", [layout[0]], AddressPolicy(), resolver).kind == "url"


def test_allow_list_opens_chosen_hosts_and_networks(layout: tuple[Path, Path]) -> None:
    from ralf.core.addresses import AddressPolicy

    policy = AddressPolicy.from_entries(["127.0.0.1", "10.20.0.0/16", "media.corp.internal"])
    resolver = fake_dns({"media.corp.internal": ["10.99.0.5"]})
    for url in ("http://127.0.0.1:8000/a.mp4", "http://10.20.3.4/a.mp4", "http://media.corp.internal/a.mp4"):
        assert check_source(url, [layout[0]], policy, resolver).kind == "url"
    for url in ("http://127.0.0.2/a.mp4", "http://10.21.0.1/a.mp4", "http://other.corp.internal/a.mp4"):
        with pytest.raises(SourceRefused):
            check_source(url, [layout[0]], policy, resolver)
    with pytest.raises(ValueError, match="neither an address/network nor a host name"):
        AddressPolicy.from_entries(["http://x/"])


@pytest.mark.parametrize("url", ["http://user:secret@example.com/a.mp4", "https://:secret@example.com/a.mp4"])
def test_credentials_are_refused_without_repeating_them(layout: tuple[Path, Path], url: str) -> None:
    with pytest.raises(SourceRefused, match="credentials") as info:
        check_source(url, [layout[0]])
    assert "secret" not in str(info.value)


def test_settings_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from ralf.core.settings import Settings

    monkeypatch.setenv("RALF_URL_ALLOW", "127.0.0.1, 10.0.0.0/8,media.internal")
    policy = Settings().url_policy()
    assert policy.host_allowed("MEDIA.internal") and len(policy.allow_networks) == 2
    monkeypatch.setenv("RALF_URL_ALLOW", "not a host!")
    with pytest.raises(ValueError, match="neither"):
        Settings()


def test_enqueue_checks_the_size_before_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 5 GiB upload over the 4 GiB limit is refused at once, not after reading it all to hash it."""
    from ralf.core.settings import Settings
    from worker import queue

    huge = tmp_path / "huge.mp4"
    with huge.open("wb") as handle:  # sparse: takes no disk space
        handle.truncate(5 * 1024**3)

    def no_hashing(path: object) -> str:
        raise AssertionError("the file was hashed before its size was checked")

    monkeypatch.setattr(queue, "file_sha256", no_hashing)
    settings = Settings(media_roots=[tmp_path])
    with pytest.raises(SourceRefused, match=r"file too large: .*huge.mp4 has 5368709120 bytes, the limit is 4294967296"):
        queue.build_scan_job(str(huge), settings, version="v")
    with pytest.raises(SourceRefused, match="the limit is 1000"):
        queue.build_scan_job(str(huge), settings.model_copy(update={"max_file_bytes": 1000}), version="v")


def test_enqueue_refuses_a_file_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable file is refused with the reason (the tests run as root, who reads any file: the
    hashing is made to fail as it does for another user)."""
    from ralf.core.settings import Settings
    from worker import queue

    clip = tmp_path / "private.mp4"
    clip.write_bytes(b"x" * 100)

    def unreadable(path: object) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(queue, "file_sha256", unreadable)
    with pytest.raises(SourceRefused, match=r"cannot read the file .*private.mp4: Permission denied"):
        queue.build_scan_job(str(clip), Settings(media_roots=[tmp_path]), version="v")
