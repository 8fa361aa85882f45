//! The image documents an unpack walks (OCI and Docker schema 2: index or
//! manifest list, manifest), the choice of this machine's manifest in an
//! index, how a layer is compressed, and the names an image is looked up
//! by.

use serde::Deserialize;

/// An OCI index or a Docker manifest list.
const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
/// An OCI or Docker schema 2 image manifest.
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

/// A content descriptor, as the image documents spell it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform of a manifest in an index.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(super) struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An index's manifests.
#[derive(Debug, Deserialize)]
pub(super) struct Index {
    pub manifests: Vec<Descriptor>,
}

/// A manifest's layers, base first.
#[derive(Debug, Deserialize)]
pub(super) struct Manifest {
    pub layers: Vec<Descriptor>,
}

/// What a descriptor points at, by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Index,
    Manifest,
    Other,
}

pub(super) fn kind(media_type: &str) -> Kind {
    if INDEX_TYPES.contains(&media_type) {
        Kind::Index
    } else if MANIFEST_TYPES.contains(&media_type) {
        Kind::Manifest
    } else {
        Kind::Other
    }
}

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
}

/// A layer's compression by its media type (OCI, Docker, their
/// non-distributable forms); `None` for what is not a tar layer, or is
/// compressed in a way this unpacker does not read (zstd).
pub(super) fn compression(media_type: &str) -> Option<Compression> {
    if media_type.ends_with(".tar") {
        Some(Compression::None)
    } else if media_type.ends_with(".tar+gzip") || media_type.ends_with(".tar.gzip") {
        Some(Compression::Gzip)
    } else {
        None
    }
}

/// This machine's platform in OCI's words (`os`, `architecture`).
pub(super) fn this_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

/// The manifest for `(os, architecture)` among an index's: the first
/// whose platform matches, else the first that names none (an index of
/// one manifest often does not).
pub(super) fn pick<'a>(manifests: &'a [Descriptor], (os, arch): (&str, &str)) -> Option<&'a Descriptor> {
    let matches = |p: &Platform| {
        let variant_fits = arch != "arm64" || matches!(p.variant.as_deref(), None | Some("" | "v8"));
        p.os == os && p.architecture == arch && variant_fits
    };
    let usable = |d: &&Descriptor| kind(&d.media_type) != Kind::Other;
    manifests
        .iter()
        .filter(usable)
        .find(|d| d.platform.as_ref().is_some_and(matches))
        .or_else(|| manifests.iter().filter(usable).find(|d| d.platform.is_none()))
}

/// The names image `reference` is looked up by: as given, then as Docker
/// completes a short name (`busybox` is `docker.io/library/busybox:latest`),
/// which is how dockerd, nerdctl and the CRI store it.
pub(super) fn names(reference: &str) -> Vec<String> {
    let mut names = vec![reference.to_owned()];
    let completed = complete(reference);
    if completed != reference {
        names.push(completed);
    }
    names
}

fn complete(reference: &str) -> String {
    let (first, rest) = match reference.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (reference, None),
    };
    // A first part with a dot or a port, or `localhost`, is a registry.
    let has_registry = rest.is_some() && (first.contains(['.', ':']) || first == "localhost");
    let mut full = match (has_registry, rest) {
        (true, _) => reference.to_owned(),
        (false, Some(_)) => format!("docker.io/{reference}"),
        (false, None) => format!("docker.io/library/{reference}"),
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if !last.contains([':', '@']) {
        full.push_str(":latest");
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, digest: &str, platform: Option<(&str, &str, Option<&str>)>) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size: 1,
            platform: platform.map(|(os, architecture, variant)| Platform {
                os: os.into(),
                architecture: architecture.into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn the_manifest_for_this_platform_is_picked_from_an_index() {
        let m = MANIFEST_TYPES[0];
        let manifests = [
            desc(m, "sha256:arm", Some(("linux", "arm64", Some("v8")))),
            desc(m, "sha256:amd", Some(("linux", "amd64", None))),
            desc(m, "sha256:win", Some(("windows", "amd64", None))),
            desc("application/vnd.in-toto+json", "sha256:att", None),
        ];
        assert_eq!(pick(&manifests, ("linux", "amd64")).map(|d| d.digest.as_str()), Some("sha256:amd"));
        assert_eq!(pick(&manifests, ("linux", "arm64")).map(|d| d.digest.as_str()), Some("sha256:arm"));
        assert_eq!(pick(&manifests, ("linux", "s390x")), None);
        let untagged = [desc(m, "sha256:only", None)];
        assert_eq!(pick(&untagged, ("linux", "s390x")).map(|d| d.digest.as_str()), Some("sha256:only"));
        let arm_v7 = [desc(m, "sha256:v7", Some(("linux", "arm64", Some("v7"))))];
        assert_eq!(pick(&arm_v7, ("linux", "arm64")), None);
    }

    #[test]
    fn documents_parse_from_their_json_and_media_types_sort() {
        let index: Index = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "digest":"sha256:ab","size":7,"platform":{"architecture":"amd64","os":"linux"}}]}"#,
        )
        .unwrap();
        assert_eq!(index.manifests[0].platform.as_ref().map(|p| p.os.as_str()), Some("linux"));
        let manifest: Manifest = serde_json::from_str(
            r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:c","size":1},
            "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:l","size":9}]}"#,
        )
        .unwrap();
        assert_eq!(compression(&manifest.layers[0].media_type), Some(Compression::Gzip));
        assert_eq!(compression("application/vnd.oci.image.layer.v1.tar"), Some(Compression::None));
        assert_eq!(
            compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(compression("application/vnd.oci.image.layer.v1.tar+zstd"), None);
        assert_eq!(kind(INDEX_TYPES[1]), Kind::Index);
        assert_eq!(kind(MANIFEST_TYPES[1]), Kind::Manifest);
    }

    #[test]
    fn short_names_are_also_looked_up_as_docker_completes_them() {
        assert_eq!(names("busybox"), ["busybox", "docker.io/library/busybox:latest"]);
        assert_eq!(names("me/app:1"), ["me/app:1", "docker.io/me/app:1"]);
        assert_eq!(names("localhost:5000/app"), ["localhost:5000/app", "localhost:5000/app:latest"]);
        assert_eq!(names("ghcr.io/o/app@sha256:ab"), ["ghcr.io/o/app@sha256:ab"]);
        assert_eq!(names("docker.io/library/alpine:3"), ["docker.io/library/alpine:3"]);
    }
}
