"""OCI image archives built without docker, and the lab's reference image set.

Aspects: image names are checked with a message that says what is wrong, and get ``:latest``;
a layer is deterministic (sorted, fixed mtimes, numeric owners, links kept, special files
skipped), so the same inputs give the same digests whatever the mtimes; the config's diff ids
and platform are right; extending a base copies its blobs unchanged (compressed ones too) and
inherits its config unless overridden; a failed build leaves no file; ``inspect_archive``
accepts OCI layouts and docker-save archives and refuses anything else, ``..`` and absolute
members, escaping links and oversize archives; a bundle holds each blob once; the reference
set's tag follows the rootfs stamp and the sources, and its six images share their base
blobs; a missing rootfs names the script that builds it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from dataplane import images
from dataplane.lab import images as lab_images


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        out = {}
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            out[m.name] = fh.read() if fh else b""
        return out


def image_docs(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    blobs = members(archive)
    index = json.loads(blobs["index.json"])
    manifest = json.loads(blobs[images._blob_name(index["manifests"][0]["digest"])])
    config = json.loads(blobs[images._blob_name(manifest["config"]["digest"])])
    return index, manifest, config


def make_tree(root: Path) -> Path:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("localhost\n")
    tool = root / "usr" / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    tool.chmod(0o4755)
    os.link(tool, root / "usr" / "bin" / "tool-alias")
    (root / "bin").symlink_to("usr/bin")
    os.mkfifo(root / "etc" / "fifo")
    (root / "zz-last").write_text("z")
    (root / "a-first").write_text("a")
    return root


@pytest.mark.parametrize(("name", "full"), [
    ("mobility/echo", "mobility/echo:latest"),
    ("mobility/echo:0123abcd", "mobility/echo:0123abcd"),
    ("a.b_c-d/e__f/g--h:Tag_1.2-x", "a.b_c-d/e__f/g--h:Tag_1.2-x"),
    ("x", "x:latest"),
])
def test_good_names(name: str, full: str) -> None:
    assert images.check_name(name) == full
    assert images.NAME_RE.match(name)


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"),
    ("Mobility/echo", "lowercase"),
    ("mobility/-echo", "component"),
    ("mobility//echo", "component"),
    ("mobility/echo.", "component"),
    ("mobility/echo:.tag", "tag"),
    ("mobility/echo:" + "t" * 129, "tag"),
    ("mobility/echo@sha256:" + "0" * 64, "digest"),
    ("m/" + "e" * 200, "200"),
])
def test_bad_names_say_why(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        images.check_name(name)


def test_layer_is_deterministic_and_keeps_links(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first = io.BytesIO()
    d1 = images.write_layer(tree, first)
    for path in tree.rglob("*"):
        if not path.is_symlink() and path.is_file():
            os.utime(path, (1234567, 7654321))
    second = io.BytesIO()
    d2 = images.write_layer(tree, second)
    assert d1 == d2
    assert first.getvalue() == second.getvalue()
    assert d1.digest == "sha256:" + hashlib.sha256(first.getvalue()).hexdigest()
    assert d1.size == len(first.getvalue())

    first.seek(0)
    with tarfile.open(fileobj=first) as tar:
        entries = tar.getmembers()
    names = [m.name for m in entries]
    assert names == ["a-first", "bin", "etc", "etc/hostname", "usr", "usr/bin",
                     "usr/bin/tool", "usr/bin/tool-alias", "zz-last"]  # fifo skipped
    by_name = {m.name: m for m in entries}
    assert by_name["bin"].issym() and by_name["bin"].linkname == "usr/bin"
    assert by_name["usr/bin/tool"].isfile() and by_name["usr/bin/tool"].mode == 0o4755
    assert by_name["usr/bin/tool-alias"].islnk()
    assert by_name["usr/bin/tool-alias"].linkname == "usr/bin/tool"
    st = (tree / "etc" / "hostname").stat()
    assert all(m.mtime == 0 and m.uname == "" and m.gname == "" for m in entries)
    assert (by_name["etc/hostname"].uid, by_name["etc/hostname"].gid) == (st.st_uid, st.st_gid)


def test_build_archive_layout_and_determinism(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    out1 = images.build_archive(tmp_path / "a.tar", name="mobility/t:1", layers=[tree],
                                env={"PATH": "/usr/bin:/bin", "A": "1"},
                                entrypoint=["/usr/bin/tool"], cmd=["--x"], workdir="/etc")
    out2 = images.build_archive(tmp_path / "b.tar", name="mobility/t:1", layers=[tree],
                                env={"PATH": "/usr/bin:/bin", "A": "1"},
                                entrypoint=["/usr/bin/tool"], cmd=["--x"], workdir="/etc")
    assert out1.read_bytes() == out2.read_bytes()
    blobs = members(out1)
    assert json.loads(blobs["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in blobs.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rpartition("/")[2]
    index, manifest, config = image_docs(out1)
    ann = index["manifests"][0]["annotations"]
    assert ann == {"io.containerd.image.name": "mobility/t:1",
                   "org.opencontainers.image.ref.name": "1"}
    assert index["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"] == {"Env": ["PATH=/usr/bin:/bin", "A=1"],
                                "Entrypoint": ["/usr/bin/tool"], "Cmd": ["--x"],
                                "WorkingDir": "/etc"}
    layer = manifest["layers"][0]
    assert layer["mediaType"] == images.MEDIA_LAYER
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer["digest"]]}
    assert images.inspect_archive(out1) == images.ArchiveInfo("oci", ("mobility/t:1",),
                                                              out1.stat().st_size)
    assert list(tmp_path.glob(".*.tmp")) == []


def test_base_extension_keeps_blobs_and_config(tmp_path: Path) -> None:
    base_tree = make_tree(tmp_path / "base")
    app = tmp_path / "app"
    (app / "srv").mkdir(parents=True)
    (app / "srv" / "app.py").write_text("print('app')\n")
    base = images.build_archive(tmp_path / "base.tar", name="mobility/base:1",
                                layers=[base_tree], env={"PATH": "/bin", "KEEP": "1"},
                                entrypoint=["python3"], cmd=["-V"], workdir="/srv")
    app1 = images.build_archive(tmp_path / "app.tar", name="mobility/app:1", layers=[app],
                                base=base, env={"PATH": "/usr/bin", "NEW": "2"})
    _, base_manifest, base_config = image_docs(base)
    _, manifest, config = image_docs(app1)
    assert manifest["layers"][0] == base_manifest["layers"][0]
    assert len(manifest["layers"]) == 2
    assert config["rootfs"]["diff_ids"][0] == base_config["rootfs"]["diff_ids"][0]
    base_blob = images._blob_name(base_manifest["layers"][0]["digest"])
    assert members(app1)[base_blob] == members(base)[base_blob]
    assert config["config"]["Env"] == ["PATH=/usr/bin", "KEEP=1", "NEW=2"]
    assert config["config"]["Entrypoint"] == ["python3"]
    assert config["config"]["Cmd"] == ["-V"]
    assert config["config"]["WorkingDir"] == "/srv"
    assert images.layer_digests(app1)[0] == images.layer_digests(base)[0]
    # A new entry point drops the base's command, as a Dockerfile's ENTRYPOINT does.
    app2 = images.build_archive(tmp_path / "app2.tar", name="mobility/app:2", layers=[app],
                                base=base, entrypoint=["python3", "-m", "app"])
    assert "Cmd" not in image_docs(app2)[2]["config"]


def _gzip_base(tmp_path: Path) -> Path:
    """An OCI layout as another tool writes it: a nested index, a gzip layer."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()

    def desc(media: str, data: bytes) -> dict[str, Any]:
        return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                "size": len(data)}

    manifest = json.dumps({"schemaVersion": 2, "mediaType": images.MEDIA_MANIFEST,
                           "config": desc(images.MEDIA_CONFIG, config),
                           "layers": [desc(images.MEDIA_LAYER + "+gzip", layer)]}).encode()
    arm = json.dumps({"schemaVersion": 2}).encode()
    nested = json.dumps({"schemaVersion": 2, "mediaType": images.MEDIA_INDEX, "manifests": [
        {**desc(images.MEDIA_MANIFEST, arm), "platform": {"os": "linux",
                                                          "architecture": "arm64"}},
        {**desc(images.MEDIA_MANIFEST, manifest), "platform": {"os": "linux",
                                                               "architecture": "amd64"}},
    ]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {**desc(images.MEDIA_INDEX, nested),
         "annotations": {"io.containerd.image.name": "docker.io/library/base:1"}}]}).encode()
    path = tmp_path / "exported.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", index)] + [
                (images._blob_name(desc("", d)["digest"]), d)
                for d in (layer, config, manifest, arm, nested)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_base_from_another_tool_keeps_compressed_layers(tmp_path: Path) -> None:
    base = _gzip_base(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    (app / "x").write_text("x")
    out = images.build_archive(tmp_path / "out.tar", name="mobility/x:1", layers=[app],
                               base=base)
    _, manifest, config = image_docs(out)
    assert manifest["layers"][0]["mediaType"].endswith("+gzip")
    assert config["rootfs"]["diff_ids"][0] != manifest["layers"][0]["digest"]
    assert config["rootfs"]["diff_ids"][1] == manifest["layers"][1]["digest"]
    assert config["config"]["Cmd"] == ["sh"]


def test_corrupt_base_and_missing_layer_leave_no_archive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        images.build_archive(tmp_path / "x.tar", name="m/x", layers=[tmp_path / "nope"])
    tree = make_tree(tmp_path / "tree")
    base = images.build_archive(tmp_path / "base.tar", name="m/base", layers=[tree])
    data = bytearray(base.read_bytes())
    at = data.find(b"etc/hostname")
    data[at + 600] ^= 0xFF  # inside the layer blob's bytes
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="digest"):
        images.build_archive(tmp_path / "y.tar", name="m/y", layers=[tree], base=bad)
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "y.tar").exists()
    assert list(tmp_path.glob(".*.tmp")) == []


def _tar(path: Path, entries: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"\0" * info.size) if info.isfile() else None)
    return path


def _file(name: str, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _docker_save(path: Path, tree_tar: bytes, repo_tags: list[str]) -> Path:
    """A docker-save archive (legacy layout: <id>/layer.tar, <config>.json, a symlinked
    second layer as docker writes for a layer two images share)."""
    layer_hex = hashlib.sha256(tree_tar).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin", "FROM_DOCKER=1"], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"] * 2}
                         }).encode()
    manifest = json.dumps([{"Config": "cfg.json", "RepoTags": repo_tags,
                            "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("cfg.json", config), ("aaa/layer.tar", tree_tar),
                           ("manifest.json", manifest)):
            info = _file(name, len(data))
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(_link("bbb/layer.tar", "../aaa/layer.tar"))
    return path


def test_docker_save_base_and_configs(tmp_path: Path) -> None:
    layer = io.BytesIO()
    images.write_layer(make_tree(tmp_path / "tree"), layer)
    base = _docker_save(tmp_path / "docker.tar", layer.getvalue(), ["Team/Odd:1", "base"])
    assert images.archive_configs(base) == {
        "docker.io/Team/Odd:1": images.ImageConfig((), ("sh",), ("PATH=/bin", "FROM_DOCKER=1")),
        "base:latest": images.ImageConfig((), ("sh",), ("PATH=/bin", "FROM_DOCKER=1"))}
    app = tmp_path / "app"
    app.mkdir()
    (app / "a").write_text("a")
    out = images.build_archive(tmp_path / "app.tar", name="m/app:1", layers=[app], base=base,
                               base_name="base:latest")
    _, manifest, config = image_docs(out)
    digest = "sha256:" + hashlib.sha256(layer.getvalue()).hexdigest()
    assert [d["digest"] for d in manifest["layers"][:2]] == [digest, digest]
    assert len(manifest["layers"]) == 3
    assert config["rootfs"]["diff_ids"][:2] == [digest, digest]
    assert config["config"]["Env"] == ["PATH=/bin", "FROM_DOCKER=1"]
    assert images.archive_configs(out) == {"m/app:1": images.ImageConfig(
        (), ("sh",), ("PATH=/bin", "FROM_DOCKER=1"))}
    with pytest.raises(ValueError, match="no image"):
        images.build_archive(tmp_path / "x.tar", name="m/x:1", layers=[app], base=base,
                             base_name="other:1")


def test_docker_import_names() -> None:
    assert images.docker_import_name("mobility/echo:1") == "docker.io/mobility/echo:1"
    assert images.docker_import_name("busybox") == "docker.io/library/busybox:latest"
    assert images.docker_import_name("localhost:5000/a") == "localhost:5000/a:latest"
    assert images.docker_import_name("example.org/a/b:2") == "example.org/a/b:2"


def test_inspect_accepts_docker_save(tmp_path: Path) -> None:
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["mobility/a:1", "b"],
                            "Layers": ["l/layer.tar"]}]).encode()
    path = tmp_path / "docker.tar"
    with tarfile.open(path, "w") as tar:
        info = _file("manifest.json", len(manifest))
        tar.addfile(info, io.BytesIO(manifest))
        tar.addfile(_link("l2/layer.tar", "../l/layer.tar"))  # docker's layer dedup links
    found = images.inspect_archive(path)
    assert (found.kind, found.names) == ("docker", ("mobility/a:1", "b"))


@pytest.mark.parametrize(("entries", "why"), [
    ([_file("index.json"), _file("oci-layout"), _file("../escape")], r"\.\."),
    ([_file("index.json"), _file("oci-layout"), _file("blobs/../../x")], r"\.\."),
    ([_file("/etc/passwd"), _file("manifest.json")], "absolute"),
    ([_file("manifest.json"), _link("evil", "../../etc/passwd")], "links out"),
    ([_file("manifest.json"), _link("evil", "/etc/passwd")], "links out"),
    ([_file("manifest.json"), _link("hard", "../x", tarfile.LNKTYPE)], "links out"),
    ([_file("index.json"), _file("other")], "neither"),
    ([_file("oci-layout")], "neither"),
])
def test_inspect_refuses(tmp_path: Path, entries: list[tarfile.TarInfo], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        images.inspect_archive(_tar(tmp_path / "bad.tar", entries))


def test_inspect_refuses_devices_non_tars_and_big_archives(tmp_path: Path) -> None:
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(ValueError, match="not a regular file"):
        images.inspect_archive(_tar(tmp_path / "d.tar", [_file("manifest.json"), dev]))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar" * 100)
    with pytest.raises(ValueError, match="tar"):
        images.inspect_archive(junk)
    gz = tmp_path / "x.tar.gz"
    gz.write_bytes(gzip.compress(_tar(tmp_path / "ok.tar", [_file("manifest.json")])
                                 .read_bytes()))
    with pytest.raises(ValueError, match="tar"):
        images.inspect_archive(gz)
    big = _tar(tmp_path / "big.tar", [_file("manifest.json"), _file("blob", 10_000)])
    with pytest.raises(ValueError, match="limit"):
        images.inspect_archive(big, max_bytes=5_000)
    with pytest.raises(ValueError, match="cannot read"):
        images.inspect_archive(tmp_path / "absent.tar")


def test_bundle_holds_each_blob_once(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "e").write_text("e")
    base = images.build_archive(tmp_path / "base.tar", name="m/base:1", layers=[tree])
    app = images.build_archive(tmp_path / "app.tar", name="m/app:1", layers=[extra], base=base)
    bundle = images.bundle_archives(tmp_path / "all.tar", [base, app])
    assert images.inspect_archive(bundle).names == ("m/base:1", "m/app:1")
    names = [n for n in members(bundle) if n.startswith("blobs/")]
    assert len(names) == len(set(names))
    assert set(names) == {n for a in (base, app) for n in members(a) if n.startswith("blobs/")}


def fake_rootfs(cache: Path) -> Path:
    root = cache / "rootfs" / lab_images.ROOTFS_NAME
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "lib" / "python3" / "dist-packages").mkdir(parents=True)
    (root / lab_images.ROOTFS_STAMP).write_text("suite=bookworm test\npython3=3.11\n")
    return root


def test_missing_rootfs_names_the_script(tmp_path: Path) -> None:
    with pytest.raises(lab_images.ReferenceImageError, match=r"scripts/base_rootfs\.sh"):
        lab_images.rootfs_dir(tmp_path)
    assert lab_images.main(["build", "--cache", str(tmp_path)]) == 2


def test_reference_names_and_tag(tmp_path: Path) -> None:
    root = fake_rootfs(tmp_path)
    tag = lab_images.reference_tag(tmp_path)
    assert len(tag) == 12 and int(tag, 16) >= 0
    for workload, image in [("dataplane.lab.workloads.echo", "mobility/echo"),
                            ("echo", "mobility/echo"), ("mobility/probe", "mobility/probe"),
                            ("session_probe", "mobility/session-probe"),
                            ("session-probe", "mobility/session-probe"),
                            ("dataplane.lab.workloads.sessions", "mobility/sessions"),
                            ("python", "mobility/python"),
                            ("mobility/python", "mobility/python")]:
        assert lab_images.reference_image(workload, tmp_path) == f"{image}:{tag}"
        images.check_name(f"{image}:{tag}")
    with pytest.raises(ValueError, match="known"):
        lab_images.reference_image("nginx", tmp_path)
    for workload, module in lab_images.REFERENCE_MODULES.items():
        assert lab_images.reference_image(workload, tmp_path).startswith(f"mobility/{workload}:")
        assert lab_images.REFERENCE[f"mobility/{workload}"][0] == module
    assert set(lab_images.REFERENCE_MODULES) == {"echo", "probe", "middlebox", "sessions",
                                                 "session-probe"}
    (root / lab_images.ROOTFS_STAMP).write_text("suite=bookworm test\npython3=3.12\n")
    lab_images.reference_tag.cache_clear()
    assert lab_images.reference_tag(tmp_path) != tag
    lab_images.reference_tag.cache_clear()


def test_build_reference_shares_base_blobs(tmp_path: Path) -> None:
    fake_rootfs(tmp_path)
    lab_images.reference_tag.cache_clear()
    try:
        built = lab_images.build_reference(tmp_path)
        tag = lab_images.reference_tag(tmp_path)
        assert set(built) == {f"{n}:{tag}" for n in (lab_images.BASE_IMAGE,
                                                     *lab_images.REFERENCE)}
        base = images.layer_digests(built[f"mobility/python:{tag}"])
        assert len(base) == 2  # rootfs, sdk
        for name, (module, _) in lab_images.REFERENCE.items():
            archive = built[f"{name}:{tag}"]
            layers = images.layer_digests(archive)
            assert layers[:2] == base and len(layers) == 3
            _, _, config = image_docs(archive)
            assert config["config"]["Entrypoint"] == ["python3", "-m", module]
            assert "PYTHONDONTWRITEBYTECODE=1" in config["config"]["Env"]
            assert "PYTHONUNBUFFERED=1" in config["config"]["Env"]
            assert images.inspect_archive(archive).names == (f"{name}:{tag}",)
        files = members(built[f"mobility/echo:{tag}"])
        with tarfile.open(fileobj=io.BytesIO(files[images._blob_name(base[1])])) as sdk:
            sdk_files = [m.name for m in sdk.getmembers() if m.isfile()]
        assert "usr/lib/python3/dist-packages/state_transfer/__init__.py" in sdk_files
        assert all(n.endswith((".py", ".pyc")) for n in sdk_files)  # sources, byte code
        workloads_blob = images._blob_name(images.layer_digests(built[f"mobility/echo:{tag}"])[2])
        with tarfile.open(fileobj=io.BytesIO(files[workloads_blob])) as wl:
            wl_names = wl.getnames()
        assert "usr/lib/python3/dist-packages/dataplane/lab/workloads/echo.py" in wl_names
        assert not [n for n in wl_names if n.endswith(("netlink.py", "pods.py"))]
        bundle = lab_images.bundle_path(tmp_path)
        assert sorted(images.inspect_archive(bundle).names) == sorted(built)
        assert images.archive_configs(bundle)[f"mobility/probe:{tag}"].entrypoint == (
            "python3", "-m", "dataplane.lab.workloads.probe")
        # Present: kept as it is.
        mtime = bundle.stat().st_mtime_ns
        assert lab_images.build_reference(tmp_path) == built
        assert bundle.stat().st_mtime_ns == mtime
    finally:
        lab_images.reference_tag.cache_clear()
