//! Hostile tar archives for tests: entries the tar crate's builder refuses
//! to write (absolute names, `..`, names with newlines, device files), made
//! from a raw header.

/// A one-entry tar stream (no end blocks) named `name` (raw bytes): a
/// regular file holding "hi", or an entry of `kind` pointing at `link`
/// (symlinks, hard links), mode 0644, owner 0, mtime 0.
pub fn raw_tar_entry(name: &[u8], kind: tar::EntryType, link: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let data: &[u8] = if kind == tar::EntryType::Regular { b"hi" } else { b"" };
    header.set_size(data.len() as u64);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}
