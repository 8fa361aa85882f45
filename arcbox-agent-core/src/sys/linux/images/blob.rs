//! Blobs read from containerd's content store as they stream: a small
//! document whole (bounded), a layer through [`Verified`] into the
//! decompressor and the tar reader, never spooled to disk. Every byte is
//! hashed on the way; a blob whose digest or size is not its descriptor's
//! fails.

use std::io::{self, Read};

use bytes::Bytes;
use containerd_client::services::v1::ReadContentRequest;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::tonic::transport::Channel;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_util::io::StreamReader;

use super::ImageError;
use super::manifest::Descriptor;
use crate::sys::linux::in_namespace;

/// The largest index or manifest read (real ones are a few KiB).
pub(super) const MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// The only digest algorithm images use in practice.
const SHA256_PREFIX: &str = "sha256:";

/// The bytes of blob `desc` as they arrive from containerd.
pub(super) async fn stream(
    channel: &Channel,
    namespace: &str,
    desc: &Descriptor,
) -> Result<impl AsyncRead + Send + Unpin + 'static, ImageError> {
    let request = ReadContentRequest { digest: desc.digest.clone(), offset: 0, size: 0 };
    let request = in_namespace(request, namespace).map_err(|_| ImageError::namespace(namespace))?;
    let answer = ContentClient::new(channel.clone())
        .read(request)
        .await
        .map_err(|status| ImageError::call("Content.Read", &desc.digest, status))?;
    let chunks = answer.into_inner().map_ok(|chunk| Bytes::from(chunk.data)).map_err(io::Error::other);
    Ok(StreamReader::new(chunks.boxed()))
}

/// Blob `desc` whole (a JSON document), its digest checked.
pub(super) async fn document(
    channel: &Channel,
    namespace: &str,
    desc: &Descriptor,
) -> Result<Vec<u8>, ImageError> {
    if usize::try_from(desc.size).map_or(true, |size| size > MAX_DOCUMENT_BYTES) {
        return Err(ImageError::Malformed {
            digest: desc.digest.clone(),
            reason: "larger than a document can be",
        });
    }
    let reader = stream(channel, namespace, desc).await?;
    let mut data = Vec::new();
    // One byte past the size shows a longer blob (which `finish` refuses).
    let read_error = |source| ImageError::Read { digest: desc.digest.clone(), source };
    reader.take(desc.size as u64 + 1).read_to_end(&mut data).await.map_err(read_error)?;
    Verified::new(&data[..], desc)?.finish()?;
    Ok(data)
}

/// A reader that hashes and counts what passes through it, to be checked
/// against its descriptor once the blob is read to its end.
pub(super) struct Verified<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    /// The expected digest's hex part.
    expected: String,
    expected_size: u64,
    digest: String,
}

impl<R: Read> Verified<R> {
    /// `inner`, checked against `desc` (a sha256 digest).
    pub(super) fn new(inner: R, desc: &Descriptor) -> Result<Self, ImageError> {
        let unsupported =
            || ImageError::Malformed { digest: desc.digest.clone(), reason: "not a sha256 digest" };
        let hex = desc.digest.strip_prefix(SHA256_PREFIX).ok_or_else(unsupported)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unsupported());
        }
        let expected_size = u64::try_from(desc.size)
            .map_err(|_| ImageError::Malformed { digest: desc.digest.clone(), reason: "a negative size" })?;
        Ok(Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            expected: hex.to_ascii_lowercase(),
            expected_size,
            digest: desc.digest.clone(),
        })
    }

    /// Reads what is left (what the tar reader left after the end of the
    /// archive), then checks the size and the digest.
    pub(super) fn finish(mut self) -> Result<(), ImageError> {
        io::copy(&mut self, &mut io::sink())
            .map_err(|source| ImageError::Read { digest: self.digest.clone(), source })?;
        let actual: String = self.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if self.count != self.expected_size || actual != self.expected {
            return Err(ImageError::Mismatch {
                digest: self.digest,
                actual: format!("{SHA256_PREFIX}{actual}"),
                size: self.count,
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        // More than the descriptor says is already wrong: stop early.
        if self.count > self.expected_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the blob is longer than its descriptor says",
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc_of(data: &[u8]) -> Descriptor {
        let hex: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
        Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{hex}"),
            size: data.len() as i64,
            platform: None,
        }
    }

    #[test]
    fn a_blob_that_matches_its_descriptor_passes_even_when_read_in_part() {
        let data = b"layer bytes".repeat(1000);
        let mut verified = Verified::new(&data[..], &desc_of(&data)).unwrap();
        let mut head = [0; 100];
        verified.read_exact(&mut head).unwrap();
        // The rest is read by finish, as the tar reader leaves it.
        verified.finish().unwrap();
    }

    #[test]
    fn a_tampered_blob_fails_its_digest_and_a_long_one_its_size() {
        let data = b"layer bytes".repeat(1000);
        let desc = desc_of(&data);
        let mut tampered = data.clone();
        tampered[5000] ^= 1;
        let err = Verified::new(&tampered[..], &desc).unwrap().finish().unwrap_err();
        assert!(matches!(&err, ImageError::Mismatch { size: 11000, .. }), "{err}");
        assert!(err.to_string().contains(&desc.digest), "{err}");
        let short = Verified::new(&data[..10], &desc).unwrap().finish().unwrap_err();
        assert!(matches!(short, ImageError::Mismatch { size: 10, .. }), "{short}");
        let mut long = data.clone();
        long.push(0);
        let err = Verified::new(&long[..], &desc).unwrap().finish().unwrap_err();
        assert!(matches!(err, ImageError::Read { .. }), "{err}");
    }

    #[test]
    fn digests_other_than_sha256_are_refused_before_reading() {
        let mut desc = desc_of(b"x");
        desc.digest = "sha512:abcd".into();
        assert!(matches!(Verified::new(&b"x"[..], &desc), Err(ImageError::Malformed { .. })));
        desc.digest = "sha256:../../etc".into();
        assert!(matches!(Verified::new(&b"x"[..], &desc), Err(ImageError::Malformed { .. })));
    }
}
