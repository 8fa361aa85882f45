//! Sandbox root filesystems from containerd's images, for real: a
//! containerd of its own (temporary root, state and socket, in a private
//! mount namespace) is given a two-layer OCI image built here and imported
//! with `ctr`, then `ContainerdImages` unpacks it through the containerd
//! client and the result is read back from disk. The same containerd
//! answers the runtime's readiness check. Needs root, containerd, ctr and
//! busybox (static: the image runs it).

mod root_ns;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use arcbox_agent_core::runtime::api::{ApiCheck as _, SocketApis};
use arcbox_agent_core::sandbox::{ImageUnpacker as _, SandboxError};
use arcbox_agent_core::sys::linux::ContainerdImages;
use flate2::Compression;
use flate2::write::GzEncoder;
use root_ns::Namespaces;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Mount,
        &["containerd", "ctr", "busybox"],
        root_ns::bodies![
            an_imported_image_unpacks_with_its_whiteouts_modes_links_and_owners,
            an_unknown_image_is_not_found_and_a_dead_containerd_unavailable,
        ],
    )
}

/// The mtime every entry of the test image has.
const MTIME_SECS: u64 = 1_600_000_000;
/// How long containerd gets to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A containerd of its own, killed when dropped.
struct Containerd {
    socket: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start(runtime: &tokio::runtime::Runtime) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        // No CRI: it would want CNI and more, and this test needs only the store.
        fs::write(&config, "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n")
            .expect("config");
        let socket = dir.path().join("containerd.sock");
        let log = fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let containerd = Self { socket, child, dir };
        // Ready when the readiness check itself says so.
        let started = Instant::now();
        loop {
            match runtime.block_on(SocketApis.containerd_version(&containerd.socket)) {
                Ok(version) => {
                    assert!(version.contains("1."), "a containerd version: {version}");
                    break;
                }
                Err(e) if started.elapsed() > START_TIMEOUT => {
                    let log =
                        fs::read_to_string(containerd.dir.path().join("containerd.log")).unwrap_or_default();
                    panic!("containerd did not answer within {START_TIMEOUT:?}: {e}\n{log}");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        containerd
    }

    /// `ctr images import` of the OCI archive `archive`.
    fn import(&self, archive: &Path, extra: &[&str]) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "default", "images", "import", "--no-unpack"])
            .args(["--base-name", "docker.io/library/sbtest"])
            .args(extra)
            .arg(archive)
            .output()
            .expect("run ctr");
        assert!(out.status.success(), "ctr import: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header(path: &str, kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME_SECS);
    h.set_size(size);
    h
}

/// A layer under construction.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(path, EntryType::Directory, mode, 0);
        self.0.append_data(&mut h, path, std::io::empty()).expect("dir");
        self
    }

    fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.owned_file(path, mode, data, 0)
    }

    fn owned_file(mut self, path: &str, mode: u32, data: &[u8], owner: u64) -> Self {
        let mut h = header(path, EntryType::Regular, mode, data.len() as u64);
        h.set_uid(owner);
        h.set_gid(owner);
        self.0.append_data(&mut h, path, data).expect("file");
        self
    }

    fn link(mut self, path: &str, kind: EntryType, target: &str) -> Self {
        let mut h = header(path, kind, 0o777, 0);
        self.0.append_link(&mut h, path, target).expect("link");
        self
    }

    fn device(mut self, path: &str) -> Self {
        let mut h = header(path, EntryType::Char, 0o666, 0);
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
        self.0.append_data(&mut h, path, std::io::empty()).expect("device");
        self
    }

    /// The uncompressed tar and its gzip.
    fn finish(self) -> (Vec<u8>, Vec<u8>) {
        let tar = self.0.into_inner().expect("tar");
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar).expect("gzip");
        (tar.clone(), gz.finish().expect("gzip"))
    }
}

fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// This machine's architecture as OCI names it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI image layout archive (`oci-layout`, `index.json`, `blobs/`)
/// of `layers` (tar, gzip), its one manifest tagged `1`.
fn oci_archive(layers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|(tar, _)| sha256(tar)).collect::<Vec<_>>() },
    });
    let config = serde_json::to_vec(&config).expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter().map(|(_, gz)| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", gz)).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest");
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    entry["platform"] = serde_json::json!({ "architecture": oci_arch(), "os": "linux" });
    entry["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": "1" });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    });
    let mut out = tar::Builder::new(Vec::new());
    let mut put = |path: String, data: &[u8]| {
        let mut h = header(&path, EntryType::Regular, 0o644, data.len() as u64);
        out.append_data(&mut h, &path, data).expect("archive entry");
    };
    put("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json".into(), &serde_json::to_vec(&index).expect("index"));
    for blob in
        [config.as_slice(), manifest.as_slice()].into_iter().chain(layers.iter().map(|(_, gz)| gz.as_slice()))
    {
        let digest = sha256(blob);
        put(format!("blobs/sha256/{}", &digest["sha256:".len()..]), blob);
    }
    out.into_inner().expect("archive")
}

/// The test image: busybox and some files, then a layer that deletes,
/// replaces and hides what the first put there.
fn test_image() -> Vec<u8> {
    let busybox = fs::read(which("busybox")).expect("read busybox");
    let base = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .link("bin/sh", EntryType::Symlink, "busybox")
        .link("bin/ash", EntryType::Link, "bin/busybox")
        .dir("etc", 0o755)
        .file("etc/hostname", 0o644, b"base\n")
        .file("etc/gone", 0o644, b"deleted by the upper layer\n")
        .owned_file("etc/secret", 0o600, b"s3cret\n", 1000)
        .file("usr/bin/setuid", 0o4755, b"#!/bin/sh\n")
        .dir("opaque", 0o750)
        .file("opaque/lower", 0o644, b"hidden by the upper layer\n")
        .file("opaque/sub/deep", 0o644, b"hidden too\n")
        .finish();
    let upper = Layer::new()
        .file("etc/.wh.gone", 0o644, b"")
        .file("etc/hostname", 0o644, b"upper\n")
        .dir("opaque", 0o750)
        .file("opaque/.wh..wh..opq", 0o644, b"")
        .file("opaque/upper", 0o644, b"from the upper layer\n")
        .device("dev/null")
        .finish();
    oci_archive(&[base, upper])
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{tool} on PATH"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    names.sort();
    names
}

fn an_imported_image_unpacks_with_its_whiteouts_modes_links_and_owners() {
    let runtime = runtime();
    let containerd = Containerd::start(&runtime);
    let archive = containerd.dir.path().join("image.tar");
    fs::write(&archive, test_image()).expect("write the archive");
    // One image names the manifest, another the index in front of it.
    containerd.import(&archive, &["--index-name", "docker.io/library/sbtest-index:1"]);
    let images = ContainerdImages::new(&containerd.socket, vec!["k8s.io".into(), "default".into()]);

    for reference in ["sbtest:1", "docker.io/library/sbtest-index:1"] {
        let dest = tempfile::tempdir().expect("dest");
        let root = dest.path();
        let unpacked = runtime.block_on(images.unpack_image(reference, root)).expect(reference);
        assert_eq!((unpacked.namespace.as_str(), unpacked.layers, unpacked.skipped), ("default", 2, 1));

        assert_eq!(names(root), ["bin", "etc", "opaque", "usr"], "no dev/null: devices are skipped");
        assert_eq!(names(&root.join("etc")), ["hostname", "secret"], "the whiteout removed etc/gone");
        assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), "upper\n");
        assert_eq!(names(&root.join("opaque")), ["upper"], "the opaque directory hides the lower layer");

        let busybox = fs::symlink_metadata(root.join("bin/busybox")).unwrap();
        assert_eq!(busybox.len(), fs::metadata(which("busybox")).unwrap().len());
        assert_eq!(busybox.permissions().mode() & 0o7777, 0o755);
        assert_eq!(busybox.mtime(), MTIME_SECS as i64);
        let ash = fs::symlink_metadata(root.join("bin/ash")).unwrap();
        assert_eq!((ash.ino(), busybox.nlink()), (busybox.ino(), 2), "bin/ash is a hard link");
        assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
        let secret = fs::metadata(root.join("etc/secret")).unwrap();
        assert_eq!((secret.mode() & 0o7777, secret.uid(), secret.gid()), (0o600, 1000, 1000));
        assert_eq!(fs::metadata(root.join("usr/bin/setuid")).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(fs::metadata(root.join("opaque")).unwrap().mode() & 0o7777, 0o750);

        // The unpacked busybox runs: its bytes came through whole.
        let out = Command::new(root.join("bin/sh")).args(["-c", "echo from the image"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from the image\n");
    }

    let dest = tempfile::tempdir().expect("dest");
    let err = runtime.block_on(images.unpack("no-such-image:1", dest.path())).unwrap_err();
    assert!(matches!(err, SandboxError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("k8s.io, default"), "{err}");
}

fn an_unknown_image_is_not_found_and_a_dead_containerd_unavailable() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("rootfs");
    fs::create_dir(&dest).expect("dest");
    // No socket at all, then a socket whose listener is gone.
    let absent = dir.path().join("absent.sock");
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).expect("bind"));
    for socket in [absent, dead] {
        let images = ContainerdImages::new(&socket, vec!["default".into()]);
        let err = runtime.block_on(images.unpack("busybox", &dest)).unwrap_err();
        assert!(matches!(err, SandboxError::Unavailable(_)), "{}: {err}", socket.display());
        assert_eq!(err.code(), 503);
    }
    // A destination that is not a directory is the request's fault.
    let containerd = Containerd::start(&runtime);
    let images = ContainerdImages::new(&containerd.socket, vec!["default".into()]);
    let err = runtime.block_on(images.unpack("busybox", &dir.path().join("missing"))).unwrap_err();
    assert!(matches!(err, SandboxError::Invalid(_)), "{err}");
    let err = runtime.block_on(images.unpack("busybox", &dest)).unwrap_err();
    assert!(matches!(err, SandboxError::NotFound(_)), "{err}");
    assert!(fs::read_dir(&dest).unwrap().next().is_none(), "nothing is left in the destination");
}
