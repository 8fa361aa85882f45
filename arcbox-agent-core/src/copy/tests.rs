//! Pack and unpack over the fake tree: `docker cp` destinations, round
//! trips, hostile names and the byte limit.

use std::path::{Path, PathBuf};

use super::*;
use crate::fake::FakeConfinedFs;
use crate::sys::{ConfinedFs, ConfinedLimits, FileKind};

const LIMIT: u64 = 1 << 20;

fn fs() -> FakeConfinedFs {
    let fs = FakeConfinedFs::new(ConfinedLimits::default());
    fs.add_file(Path::new("/src/tree/a.txt"), b"alpha");
    fs.add_file(Path::new("/src/tree/sub/b\nnewline"), b"beta");
    fs.add_symlink(Path::new("/src/tree/link"), Path::new("/etc/passwd"));
    fs.add_dir(Path::new("/dst/existing"));
    fs
}

fn pack_of(fs: &FakeConfinedFs, root: &str, src: &str, follow: bool) -> Result<Vec<u8>, CopyError> {
    let mut out = Vec::new();
    pack(fs, Path::new(root), Path::new(src), &PackOptions { follow, max_bytes: LIMIT }, &mut out)?;
    Ok(out)
}

fn unpack_at(fs: &FakeConfinedFs, dest: &str, archive: &[u8]) -> Result<CopyStats, CopyError> {
    let options = UnpackOptions { follow: true, preserve_owner: true, into_dir: false, max_bytes: LIMIT };
    unpack(fs, Path::new("/dst"), Path::new(dest), &options, &mut &archive[..])
}

fn names_under(fs: &FakeConfinedFs, prefix: &str) -> Vec<PathBuf> {
    fs.paths().into_iter().filter(|p| p.starts_with(prefix)).collect()
}

#[test]
fn a_directory_copied_to_an_existing_directory_lands_inside_it() {
    let fs = fs();
    let archive = pack_of(&fs, "/src", "tree", false).expect("pack");
    let stats = unpack_at(&fs, "existing", &archive).expect("unpack");
    assert_eq!((stats.files, stats.dirs, stats.symlinks), (2, 2, 1));
    assert_eq!(fs.contents(Path::new("/dst/existing/tree/a.txt")), Some(b"alpha".to_vec()));
    assert_eq!(fs.contents(Path::new("/dst/existing/tree/sub/b\nnewline")), Some(b"beta".to_vec()));
    let dir = fs.open_dir(Path::new("/dst"), Path::new("existing/tree")).expect("dir");
    let link = crate::sys::ConfinedDir::stat(&dir, Path::new("link")).expect("link");
    assert_eq!((link.kind, link.symlink_target), (FileKind::Symlink, Some(PathBuf::from("/etc/passwd"))));
}

#[test]
fn a_directory_copied_to_a_missing_name_becomes_that_name() {
    let fs = fs();
    let archive = pack_of(&fs, "/src", "/tree/", false).expect("pack");
    unpack_at(&fs, "renamed", &archive).expect("unpack");
    assert_eq!(fs.contents(Path::new("/dst/renamed/a.txt")), Some(b"alpha".to_vec()));
    assert!(names_under(&fs, "/dst/tree").is_empty());
    // The root's contents (`./`) fill a new directory too.
    let archive = pack_of(&fs, "/src/tree", "/", false).expect("pack the root");
    unpack_at(&fs, "contents", &archive).expect("unpack");
    assert_eq!(fs.contents(Path::new("/dst/contents/sub/b\nnewline")), Some(b"beta".to_vec()));
}

#[test]
fn a_file_replaces_a_file_and_a_directory_never_does() {
    let fs = fs();
    fs.add_file(Path::new("/dst/target"), b"old");
    let file = pack_of(&fs, "/src", "tree/a.txt", false).expect("pack a file");
    unpack_at(&fs, "target", &file).expect("replace");
    assert_eq!(fs.contents(Path::new("/dst/target")), Some(b"alpha".to_vec()));
    let dir = pack_of(&fs, "/src", "tree", false).expect("pack");
    let err = unpack_at(&fs, "target", &dir).expect_err("a directory onto a file");
    assert!(matches!(err, CopyError::Destination { .. }), "{err}");
    let err = unpack_at(&fs, "missing/", &file).expect_err("a trailing slash needs a directory");
    assert!(matches!(err, CopyError::Destination { .. }), "{err}");
    let err = unpack_at(&fs, "no/such/parent", &file).expect_err("a missing parent");
    assert!(matches!(err, CopyError::Fs(ConfinedError::NotFound { .. })), "{err}");
}

#[test]
fn a_followed_source_symlink_packs_its_target_under_the_links_name() {
    let fs = fs();
    fs.add_symlink(Path::new("/src/to_tree"), Path::new("/tree"));
    let archive = pack_of(&fs, "/src", "to_tree", true).expect("pack -L");
    unpack_at(&fs, "existing", &archive).expect("unpack");
    assert_eq!(fs.contents(Path::new("/dst/existing/to_tree/a.txt")), Some(b"alpha".to_vec()));
    let archive = pack_of(&fs, "/src", "to_tree", false).expect("pack the link");
    let stats = unpack_at(&fs, "existing", &archive).expect_err("a symlink onto the directory just made");
    assert!(matches!(stats, CopyError::Entry { source: ConfinedError::IsADirectory { .. }, .. }), "{stats}");
}

/// A one-entry archive of `kind` named `name` (bytes as given), ended.
fn raw_archive(name: &[u8], kind: tar::EntryType, link: &[u8]) -> Vec<u8> {
    let mut out = crate::fake::raw_tar_entry(name, kind, link);
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn hostile_names_and_devices_are_refused_and_write_nothing() {
    let fs = fs();
    let before = fs.paths();
    for name in [&b"../escape"[..], b"/etc/passwd", b"existing/../../x", b"a/./../../b"] {
        let err = unpack_at(&fs, "existing", &raw_archive(name, tar::EntryType::Regular, b""))
            .expect_err("refused");
        assert!(matches!(err, CopyError::Refused { .. }), "{}: {err}", String::from_utf8_lossy(name));
    }
    let err =
        unpack_at(&fs, "existing", &raw_archive(b"null", tar::EntryType::Char, b"")).expect_err("device");
    assert!(matches!(err, CopyError::Refused { .. }), "{err}");
    assert_eq!(fs.paths(), before);
}

#[test]
fn symlinks_planted_by_the_archive_lead_no_further_than_the_destination() {
    let fs = fs();
    fs.add_file(Path::new("/outside/secret"), b"outside");
    fs.add_dir(Path::new("/dst/existing/outside"));
    let mut archive = raw_archive(b"up", tar::EntryType::Symlink, b"../../../outside");
    archive.truncate(512);
    archive.extend(raw_archive(b"up/secret", tar::EntryType::Regular, b""));
    unpack_at(&fs, "existing", &archive).expect("unpack");
    assert_eq!(fs.contents(Path::new("/outside/secret")), Some(b"outside".to_vec()));
    // `up` resolves to /dst/existing/outside, inside the destination.
    assert_eq!(fs.contents(Path::new("/dst/existing/outside/secret")), Some(b"hi".to_vec()));
}

#[test]
fn archives_over_the_limit_are_refused_both_ways() {
    let fs = fs();
    fs.add_file(Path::new("/src/big"), &vec![7; 8192]);
    let mut out = Vec::new();
    let options = PackOptions { follow: false, max_bytes: 4096 };
    let err = pack(&fs, Path::new("/src"), Path::new("big"), &options, &mut out).expect_err("pack");
    assert!(matches!(err, CopyError::TooLarge { limit: 4096 }), "{err}");
    let archive = pack_of(&fs, "/src", "big", false).expect("pack");
    let options = UnpackOptions { follow: true, preserve_owner: false, into_dir: false, max_bytes: 4096 };
    let err =
        unpack(&fs, Path::new("/dst"), Path::new("big"), &options, &mut &archive[..]).expect_err("unpack");
    assert!(matches!(err, CopyError::TooLarge { limit: 4096 }), "{err}");
    assert_eq!(fs.contents(Path::new("/dst/big")), None, "no partial file");
}

#[test]
fn archive_bytes_counts_the_end_blocks_and_record_padding_too() {
    let fs = fs();
    let mut archive = pack_of(&fs, "/src", "tree", false).expect("pack");
    // Padded to a 10 KiB record, as `tar c` writes it.
    archive.resize(archive.len().next_multiple_of(10240), 0);
    let stats = unpack_at(&fs, "padded", &archive).expect("unpack");
    assert_eq!(stats.archive_bytes, archive.len() as u64);
}

/// An ended archive of raw entries (`name`, kind, link): files hold "hi".
fn layer_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link) in entries {
        out.extend(crate::fake::raw_tar_entry(name.as_bytes(), *kind, link.as_bytes()));
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A tree at /img made by a first layer.
fn image_base() -> FakeConfinedFs {
    use tar::EntryType::{Directory, Regular, Symlink};
    let fs = FakeConfinedFs::new(ConfinedLimits::default());
    fs.add_dir(Path::new("/img"));
    let base = layer_of(&[
        ("etc/", Directory, ""),
        ("etc/gone", Regular, ""),
        ("etc/kept", Regular, ""),
        ("opaque/", Directory, ""),
        ("opaque/lower", Regular, ""),
        ("opaque/sub/deep", Regular, ""),
        ("was_dir/inside", Regular, ""),
        ("link", Symlink, "etc/kept"),
    ]);
    unpack_layer(&fs, Path::new("/img"), &mut &base[..]).expect("base layer");
    fs
}

#[test]
fn a_layer_whiteout_removes_the_lower_name_and_is_not_unpacked() {
    use tar::EntryType::Regular;
    let fs = image_base();
    let upper =
        layer_of(&[("etc/.wh.gone", Regular, ""), (".wh.link", Regular, ""), ("etc/new", Regular, "")]);
    unpack_layer(&fs, Path::new("/img"), &mut &upper[..]).expect("upper layer");
    assert_eq!(
        names_under(&fs, "/img/etc"),
        ["/img/etc", "/img/etc/kept", "/img/etc/new"].map(PathBuf::from)
    );
    assert!(names_under(&fs, "/img/link").is_empty());
}

#[test]
fn an_opaque_marker_hides_the_lower_contents_wherever_it_comes() {
    use tar::EntryType::{Directory, Regular};
    let fs = image_base();
    // The new entries come before the marker: they stay all the same.
    let upper = layer_of(&[
        ("opaque/", Directory, ""),
        ("opaque/sub/upper", Regular, ""),
        ("opaque/.wh..wh..opq", Regular, ""),
        ("opaque/after", Regular, ""),
    ]);
    unpack_layer(&fs, Path::new("/img"), &mut &upper[..]).expect("upper layer");
    let expected = ["/img/opaque", "/img/opaque/after", "/img/opaque/sub", "/img/opaque/sub/upper"];
    assert_eq!(names_under(&fs, "/img/opaque"), expected.map(PathBuf::from));
}

#[test]
fn a_layer_entry_replaces_a_lower_entry_of_another_kind_and_skips_devices() {
    use tar::EntryType::{Char, Directory, Fifo, Regular};
    let fs = image_base();
    let upper = layer_of(&[
        ("was_dir", Regular, ""),
        ("etc/kept/", Directory, ""),
        ("dev/null", Char, ""),
        ("fifo", Fifo, ""),
        (".wh..wh.plnk", Directory, ""),
    ]);
    let stats = unpack_layer(&fs, Path::new("/img"), &mut &upper[..]).expect("upper layer");
    assert_eq!(stats.skipped, 3);
    assert_eq!(fs.contents(Path::new("/img/was_dir")), Some(b"hi".to_vec()));
    assert!(fs.open_dir(Path::new("/img"), Path::new("etc/kept")).is_ok());
    assert!(names_under(&fs, "/img/dev").is_empty() && names_under(&fs, "/img/fifo").is_empty());
}

#[test]
fn hostile_whiteouts_are_refused_and_reach_nothing_outside() {
    use tar::EntryType::Regular;
    let fs = image_base();
    fs.add_file(Path::new("/outside"), b"keep");
    for name in ["etc/.wh..", "../.wh.outside", "/.wh.outside", "etc/.wh."] {
        let err =
            unpack_layer(&fs, Path::new("/img"), &mut &layer_of(&[(name, Regular, "")])[..]).expect_err(name);
        assert!(matches!(err, CopyError::Refused { .. }), "{name}: {err}");
    }
    assert_eq!(fs.contents(Path::new("/outside")), Some(b"keep".to_vec()));
    assert!(fs.contents(Path::new("/img/etc/kept")).is_some());
}
