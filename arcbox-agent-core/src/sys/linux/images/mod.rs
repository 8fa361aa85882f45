//! [`ContainerdImages`]: sandbox root filesystems unpacked from the images
//! in the guest's containerd, through the containerd project's own client
//! (`containerd-client`) on its socket.
//!
//! An unpack looks the image up in each configured namespace in turn
//! (Images.Get), follows its target through an index to this machine's
//! manifest, then streams each layer, base first, from the content store
//! (Content.Read) through its digest check and its decompressor into the
//! tar reader, which applies it over `dest` with the OCI layer rules
//! ([`crate::copy::unpack_layer`]: whiteouts, opaque directories, every
//! name confined to `dest`, devices and FIFOs skipped). Nothing is spooled
//! to disk: the async stream feeds the sync tar reader through a
//! [`SyncIoBridge`] on a blocking thread. gzip and plain tar layers are
//! read; zstd layers are refused with a clear error.
//!
//! # Layout
//! - `mod.rs`: [`ContainerdImages`], its errors, the walk from name to layers.
//! - `manifest.rs`: the image documents, platform choice, media types, names.
//! - `blob.rs`: content streams and their digest check.

use std::path::{Path, PathBuf};

use containerd_client::services::v1::GetImageRequest;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Status};
use flate2::read::MultiGzDecoder;
use tokio_util::io::SyncIoBridge;

use crate::config::{DEFAULT_CONTAINERD_SOCKET, DEFAULT_IMAGE_NAMESPACES};
use crate::copy::{CopyError, unpack_layer};
use crate::sandbox::{ImageUnpacker, SandboxError};
use crate::sys::linux::{ChannelError, LinuxConfinedFs, containerd_channel, in_namespace};
use crate::sys::{ConfinedDir as _, ConfinedFs as _, ConfinedLimits};

mod blob;
mod manifest;

use blob::Verified;
use manifest::{Compression, Descriptor, Index, Kind, Manifest};

/// Indexes followed inside indexes before the image counts as malformed.
const MAX_INDEX_DEPTH: usize = 4;

/// Unpacks images of the guest's containerd; see the module docs.
#[derive(Debug, Clone)]
pub struct ContainerdImages {
    socket: PathBuf,
    namespaces: Vec<String>,
}

impl Default for ContainerdImages {
    /// containerd at its default socket, searched in the default namespaces.
    fn default() -> Self {
        Self::new(DEFAULT_CONTAINERD_SOCKET, DEFAULT_IMAGE_NAMESPACES.iter().map(|n| n.to_string()).collect())
    }
}

impl ContainerdImages {
    /// Images of the containerd on `socket`, looked up in `namespaces` in
    /// order (the first that has the image wins).
    pub fn new(socket: impl Into<PathBuf>, namespaces: Vec<String>) -> Self {
        Self { socket: socket.into(), namespaces }
    }

    /// Unpacks image `reference` into `dest`; see [`ImageUnpacker::unpack`].
    pub async fn unpack_image(&self, reference: &str, dest: &Path) -> Result<UnpackedImage, ImageError> {
        LinuxConfinedFs::new(ConfinedLimits::default())
            .open_dir(dest, Path::new("/"))
            .map_err(|source| ImageError::Destination { path: dest.to_owned(), source })?;
        let channel = containerd_channel(&self.socket).await.map_err(ImageError::Unavailable)?;
        let (namespace, target) = self.find(&channel, reference).await?;
        let layers = layers(&channel, &namespace, target).await?;
        let mut unpacked = UnpackedImage { namespace, layers: layers.len(), skipped: 0 };
        for layer in &layers {
            unpacked.skipped += apply(&channel, &unpacked.namespace, layer, dest).await?;
        }
        Ok(unpacked)
    }

    /// The first namespace that has `reference` (under any of its names),
    /// and the image's target.
    async fn find(&self, channel: &Channel, reference: &str) -> Result<(String, Descriptor), ImageError> {
        let names = manifest::names(reference);
        for namespace in &self.namespaces {
            for name in &names {
                let request = in_namespace(GetImageRequest { name: name.clone() }, namespace)
                    .map_err(|_| ImageError::namespace(namespace))?;
                let image = match ImagesClient::new(channel.clone()).get(request).await {
                    Ok(answer) => answer.into_inner().image,
                    Err(status) if status.code() == Code::NotFound => continue,
                    Err(status) => return Err(ImageError::call("Images.Get", name, status)),
                };
                let target = image.and_then(|image| image.target).ok_or_else(|| ImageError::Malformed {
                    digest: name.clone(),
                    reason: "an image with no target",
                })?;
                let target = Descriptor {
                    media_type: target.media_type,
                    digest: target.digest,
                    size: target.size,
                    platform: None,
                };
                return Ok((namespace.clone(), target));
            }
        }
        Err(ImageError::NotFound { reference: reference.to_owned(), namespaces: self.namespaces.join(", ") })
    }
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedImage {
    /// The containerd namespace the image was found in.
    pub namespace: String,
    /// Layers applied.
    pub layers: usize,
    /// Devices, FIFOs and whiteout metadata left out.
    pub skipped: u64,
}

#[async_trait::async_trait]
impl ImageUnpacker for ContainerdImages {
    async fn unpack(&self, reference: &str, dest: &Path) -> Result<(), SandboxError> {
        match self.unpack_image(reference, dest).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // A half-applied image is no root filesystem: leave `dest` empty.
                empty(dest);
                Err(e.into())
            }
        }
    }
}

/// The layers of image `target`, base first: through indexes to this
/// machine's manifest, then its layer list.
async fn layers(
    channel: &Channel,
    namespace: &str,
    mut target: Descriptor,
) -> Result<Vec<Descriptor>, ImageError> {
    for _ in 0..MAX_INDEX_DEPTH {
        let document = blob::document(channel, namespace, &target).await?;
        let malformed =
            |_| ImageError::Malformed { digest: target.digest.clone(), reason: "not valid JSON of its type" };
        match manifest::kind(&target.media_type) {
            Kind::Manifest => {
                let manifest: Manifest = serde_json::from_slice(&document).map_err(malformed)?;
                return Ok(manifest.layers);
            }
            Kind::Index => {
                let index: Index = serde_json::from_slice(&document).map_err(malformed)?;
                let platform = manifest::this_platform();
                let Some(picked) = manifest::pick(&index.manifests, platform) else {
                    return Err(ImageError::NoPlatform {
                        digest: target.digest,
                        platform: format!("{}/{}", platform.0, platform.1),
                    });
                };
                target = picked.clone();
            }
            Kind::Other => {
                return Err(ImageError::Unsupported { digest: target.digest, media_type: target.media_type });
            }
        }
    }
    Err(ImageError::Malformed { digest: target.digest, reason: "indexes nested too deep" })
}

/// Streams layer `layer` over `dest`; returns the entries it left out.
async fn apply(
    channel: &Channel,
    namespace: &str,
    layer: &Descriptor,
    dest: &Path,
) -> Result<u64, ImageError> {
    let Some(compression) = manifest::compression(&layer.media_type) else {
        return Err(ImageError::Unsupported {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        });
    };
    let stream = blob::stream(channel, namespace, layer).await?;
    // Made here: the bridge keeps this runtime's handle to block on.
    let bridge = SyncIoBridge::new(stream);
    let (layer, dest) = (layer.clone(), dest.to_owned());
    let task = tokio::task::spawn_blocking(move || -> Result<u64, ImageError> {
        let mut verified = Verified::new(bridge, &layer)?;
        let fs = LinuxConfinedFs::new(ConfinedLimits::default());
        let failed = |source| ImageError::Layer { digest: layer.digest.clone(), source };
        let stats = match compression {
            Compression::None => unpack_layer(&fs, &dest, &mut verified),
            Compression::Gzip => unpack_layer(&fs, &dest, &mut MultiGzDecoder::new(&mut verified)),
        };
        // A wrong digest explains a broken stream better than the tar error.
        let checked = verified.finish();
        let stats = stats.map_err(failed);
        checked?;
        Ok(stats?.skipped)
    });
    task.await.map_err(|e| ImageError::Task(e.to_string()))?
}

/// Removes everything in `dest` (best effort), keeping `dest` itself.
fn empty(dest: &Path) {
    let fs = LinuxConfinedFs::new(ConfinedLimits::default());
    let Ok(dir) = fs.open_dir(dest, Path::new("/")) else { return };
    for name in dir.names().unwrap_or_default() {
        let _ = fs.remove(dest, Path::new(&name), true);
    }
}

/// Why an image could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// containerd is not there or not answering.
    #[error("containerd is not available: {0}")]
    Unavailable(#[source] ChannelError),
    /// A call failed because containerd stopped answering meanwhile.
    #[error("containerd {call} for {object}: {status}")]
    Gone {
        /// The API call.
        call: &'static str,
        /// What it was about (a name or a digest).
        object: String,
        /// containerd's status.
        status: Box<Status>,
    },
    /// No searched namespace has the image.
    #[error("image {reference:?} is not in containerd (namespaces {namespaces})")]
    NotFound {
        /// The image asked for.
        reference: String,
        /// The namespaces searched.
        namespaces: String,
    },
    /// containerd answered a call with an error.
    #[error("containerd {call} for {object}: {status}")]
    Call {
        /// The API call.
        call: &'static str,
        /// What it was about (a name or a digest).
        object: String,
        /// containerd's status.
        status: Box<Status>,
    },
    /// An index has no manifest for this machine.
    #[error("image index {digest} has no manifest for {platform}")]
    NoPlatform {
        /// The index.
        digest: String,
        /// This machine's platform (`linux/amd64`).
        platform: String,
    },
    /// A document or layer of a kind this unpacker does not read.
    #[error("{digest}: media type {media_type:?} is not read here (tar and tar+gzip layers are)")]
    Unsupported {
        /// The blob.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// `dest` is not an absolute path to a directory.
    #[error("{path}: not a directory to unpack into: {source}")]
    Destination {
        /// The destination asked for.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::sys::ConfinedError,
    },
    /// An image document is not what its type says.
    #[error("{digest}: {reason}")]
    Malformed {
        /// The blob (or image name).
        digest: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A blob's stream broke.
    #[error("reading {digest}: {source}")]
    Read {
        /// The blob.
        digest: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A blob's bytes are not its digest's.
    #[error("{digest}: the content read is {size} bytes with digest {actual}")]
    Mismatch {
        /// The digest expected.
        digest: String,
        /// The digest of what was read.
        actual: String,
        /// The bytes read.
        size: u64,
    },
    /// A layer could not be applied.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer.
        digest: String,
        /// Why.
        #[source]
        source: CopyError,
    },
    /// The blocking task that applied a layer died.
    #[error("the layer task failed: {0}")]
    Task(String),
}

impl ImageError {
    /// containerd's answer `status` to `call` about `object`.
    fn call(call: &'static str, object: &str, status: Status) -> Self {
        let (object, status) = (object.to_owned(), Box::new(status));
        match status.code() {
            Code::Unavailable => ImageError::Gone { call, object, status },
            _ => ImageError::Call { call, object, status },
        }
    }

    /// A namespace name that cannot travel as gRPC metadata.
    fn namespace(namespace: &str) -> Self {
        ImageError::Malformed {
            digest: namespace.to_owned(),
            reason: "not a usable containerd namespace name",
        }
    }
}

impl From<ImageError> for SandboxError {
    fn from(e: ImageError) -> Self {
        let message = e.to_string();
        match e {
            ImageError::NotFound { .. } => SandboxError::NotFound(message),
            ImageError::Unavailable(_) | ImageError::Gone { .. } => SandboxError::Unavailable(message),
            ImageError::NoPlatform { .. } | ImageError::Unsupported { .. } => SandboxError::Invalid(message),
            ImageError::Destination { .. } => SandboxError::Invalid(message),
            _ => SandboxError::Failed(message),
        }
    }
}
