//! What is on a block device, from the signatures in its first bytes.
//!
//! The data disk is formatted only when it is provably blank: no known
//! filesystem, partition table or volume signature, and nothing but zeros
//! in the bytes inspected. Anything else is somebody's data.

/// Bytes read from the start of a device to classify it (4 MiB).
pub const HEAD_BYTES: usize = 4 << 20;

/// A recognised on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Btrfs: `_BHRfS_M` at 0x10040.
    Btrfs,
    /// ext2/3/4: 0xEF53 at 1080.
    Ext,
    /// XFS: `XFSB` at 0.
    Xfs,
    /// EROFS: 0xE0F5E1E2 at 1024.
    Erofs,
    /// SquashFS: `hsqs` at 0.
    Squashfs,
    /// Linux swap: `SWAPSPACE2` / `SWAP-SPACE` at the end of the first page.
    Swap,
    /// LUKS: `LUKS\xba\xbe` at 0.
    Luks,
    /// LVM2 physical volume: `LABELONE` in sector 1.
    Lvm2,
    /// GPT: `EFI PART` at 512 (or 4096 on 4K-sector disks).
    Gpt,
    /// MBR or boot sector: 0x55AA at 510.
    Mbr,
}

impl Signature {
    /// Human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Signature::Btrfs => "btrfs filesystem",
            Signature::Ext => "ext2/3/4 filesystem",
            Signature::Xfs => "XFS filesystem",
            Signature::Erofs => "EROFS filesystem",
            Signature::Squashfs => "SquashFS filesystem",
            Signature::Swap => "swap space",
            Signature::Luks => "LUKS encrypted volume",
            Signature::Lvm2 => "LVM2 physical volume",
            Signature::Gpt => "GPT partition table",
            Signature::Mbr => "MBR partition table or boot sector",
        }
    }
}

/// What the head of a device holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskContents {
    /// Only zeros in the inspected bytes, and no signature: safe to format.
    Blank,
    /// A recognised format.
    Known(Signature),
    /// Non-zero bytes with no recognised signature: not provably blank.
    UnknownData {
        /// Offset of the first non-zero byte.
        first_nonzero: usize,
    },
}

fn has(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// Classifies the first bytes of a device. Btrfs is checked first so our
/// own data disk is always recognised.
pub fn classify(head: &[u8]) -> DiskContents {
    const CHECKS: &[(Signature, usize, &[u8])] = &[
        (Signature::Btrfs, 0x10040, b"_BHRfS_M"),
        (Signature::Ext, 1080, &[0x53, 0xEF]),
        (Signature::Xfs, 0, b"XFSB"),
        (Signature::Erofs, 1024, &[0xE2, 0xE1, 0xF5, 0xE0]),
        (Signature::Squashfs, 0, b"hsqs"),
        (Signature::Swap, 4086, b"SWAPSPACE2"),
        (Signature::Swap, 4086, b"SWAP-SPACE"),
        (Signature::Swap, 65526, b"SWAPSPACE2"),
        (Signature::Luks, 0, b"LUKS\xba\xbe"),
        (Signature::Lvm2, 512, b"LABELONE"),
        (Signature::Gpt, 512, b"EFI PART"),
        (Signature::Gpt, 4096, b"EFI PART"),
        (Signature::Mbr, 510, &[0x55, 0xAA]),
    ];
    for &(signature, offset, magic) in CHECKS {
        if has(head, offset, magic) {
            return DiskContents::Known(signature);
        }
    }
    match head.iter().position(|&b| b != 0) {
        None => DiskContents::Blank,
        Some(first_nonzero) => DiskContents::UnknownData { first_nonzero },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; 128 * 1024];
        head[offset..offset + magic.len()].copy_from_slice(magic);
        head
    }

    #[test]
    fn zeros_are_blank() {
        assert_eq!(classify(&vec![0u8; HEAD_BYTES]), DiskContents::Blank);
    }

    #[test]
    fn every_known_signature_is_recognised() {
        let cases: &[(usize, &[u8], Signature)] = &[
            (0x10040, b"_BHRfS_M", Signature::Btrfs),
            (1080, &[0x53, 0xEF], Signature::Ext),
            (0, b"XFSB", Signature::Xfs),
            (1024, &[0xE2, 0xE1, 0xF5, 0xE0], Signature::Erofs),
            (0, b"hsqs", Signature::Squashfs),
            (4086, b"SWAPSPACE2", Signature::Swap),
            (65526, b"SWAPSPACE2", Signature::Swap),
            (0, b"LUKS\xba\xbe", Signature::Luks),
            (512, b"LABELONE", Signature::Lvm2),
            (512, b"EFI PART", Signature::Gpt),
            (510, &[0x55, 0xAA], Signature::Mbr),
        ];
        for &(offset, magic, expected) in cases {
            assert_eq!(classify(&with(offset, magic)), DiskContents::Known(expected), "{}", expected.name());
        }
    }

    #[test]
    fn any_other_nonzero_byte_is_not_blank() {
        let mut head = vec![0u8; HEAD_BYTES];
        head[3 << 20] = 1;
        assert_eq!(classify(&head), DiskContents::UnknownData { first_nonzero: 3 << 20 });
    }

    #[test]
    fn a_short_device_is_classified_on_what_it_has() {
        assert_eq!(classify(&[0u8; 100]), DiskContents::Blank);
        assert_eq!(classify(b"hsqs"), DiskContents::Known(Signature::Squashfs));
    }
}
