//! Tests of the fsutil module: pattern semantics (cases from moby/patternmatcher's and Go's
//! documented behaviour), walk order and filtering, stat encoding, and a loopback of `send`
//! into `receive` over channels.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::filter::Filter;
use super::pattern::{PatternMatcher, clean, go_match};
use super::walk;
use super::*;

fn pm(patterns: &[&str]) -> PatternMatcher {
    PatternMatcher::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("{patterns:?}: {e}"))
}

#[test]
fn go_clean() {
    for (input, want) in [
        ("", "."),
        ("a/", "a"),
        ("a//b", "a/b"),
        ("./a/./b/", "a/b"),
        ("a/../b", "b"),
        ("../a", "../a"),
        ("/../a", "/a"),
        ("a/b/../..", "."),
        ("/", "/"),
        ("//a", "/a"),
    ] {
        assert_eq!(clean(input), want, "clean({input:?})");
    }
}

/// Go's `filepath.Match` table (as patternmatcher's tests use it).
#[test]
fn go_filepath_match() {
    let ok = [
        ("abc", "abc", true),
        ("*", "abc", true),
        ("*c", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ab/c", false),
        ("a*/b", "abc/b", true),
        ("a*/b", "a/c/b", false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true),
        ("a*b?c*x", "abxbbxdbxebxczzy", false),
        ("ab[c]", "abc", true),
        ("ab[b-d]", "abc", true),
        ("ab[e-g]", "abc", false),
        ("ab[^c]", "abc", false),
        ("ab[^b-d]", "abc", false),
        ("ab[^e-g]", "abc", true),
        ("a\\*b", "a*b", true),
        ("a\\*b", "ab", false),
        ("a?b", "a☺b", true),
        ("a[^a]b", "a☺b", true),
        ("a???b", "a☺b", false),
        ("a[^a][^a][^a]b", "a☺b", false),
        ("[a-ζ]*", "α", true),
        ("*[a-ζ]", "A", false),
        ("a?b", "a/b", false),
        ("a*b", "a/b", false),
        ("[\\]a]", "]", true),
        ("[\\-]", "-", true),
        ("[x\\-]", "x", true),
        ("[x\\-]", "-", true),
        ("[x\\-]", "z", false),
        ("[\\-x]", "x", true),
        ("[\\-x]", "-", true),
        ("[\\-x]", "a", false),
        ("*x", "xxx", true),
    ];
    for (p, s, want) in ok {
        assert_eq!(go_match(p, s), Ok(want), "Match({p:?}, {s:?})");
    }
    for p in [
        "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[",
    ] {
        assert!(
            go_match(p, "a").is_err(),
            "Match({p:?}) should be a bad pattern"
        );
        assert!(
            PatternMatcher::new(&[p.to_string()]).is_err(),
            "{p:?} should be rejected"
        );
    }
}

/// Single patterns against paths, matched as a file or through a parent directory
/// (patternmatcher's `MatchesOrParentMatches`).
#[test]
fn pattern_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("**", "file", true),
        ("**/", "file", true),
        ("**", "dir/file", true),
        ("**/**", "dir/file", true),
        ("dir/**", "dir/file", true),
        ("dir/**", "dir/dir2/file", true),
        ("dir/**", "dir", false),
        ("**/dir", "dir", true),
        ("**/dir", "dir/file", true),
        ("**/dir2/*", "dir/dir2/file", true),
        ("**/dir2/**", "dir/dir2/dir3/file", true),
        ("**file", "file", true),
        ("**file", "dir/file", true),
        ("**/file", "dir/dir/file", true),
        ("**/file*", "dir/dir/file.txt", true),
        ("**/file*txt", "dir/dir/file.txt", true),
        ("**/**/*.txt", "dir/dir/file.txt", true),
        ("**/**/*.txt2", "dir/dir/file.txt", false),
        ("**/*.txt", "file.txt", true),
        ("a**/*.txt", "a/file.txt", true),
        ("a**/*.txt", "a/dir/dir/file.txt", true),
        ("a/*.txt", "a/dir/file.txt", false),
        ("a/*.txt", "a/file.txt", true),
        ("a/*.txt**", "a/file.txt", true),
        ("a[b-d]e", "ae", false),
        ("a[b-d]e", "ace", true),
        ("a[^b-d]e", "aze", true),
        (".*", ".foo", true),
        (".*", "foo", false),
        ("abc.def", "abcdef", false),
        ("abc.def", "abc.def", true),
        ("abc?def", "abcZdef", true),
        ("abc?def", "abcdef", false),
        ("**/foo/bar", "foo/bar", true),
        ("**/foo/bar", "dir/dir2/foo/bar", true),
        ("abc/**", "abc", false),
        ("abc/**", "abc/def/ghi", true),
        ("**/.foo", ".foo", true),
        ("**/.foo", "bar.foo", false),
        ("a(b)c/def", "a(b)c/def", true),
        ("a(b)c/def", "a(b)c/xyz", false),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        ("a\\\\", "a\\", true),
        ("a\\*b", "a*b", true),
        ("a\\*b", "axb", false),
        // Matching a parent directory excludes everything below it.
        ("node_modules", "node_modules/x/y.js", true),
        ("*.log", "logs/a.log", false),
        ("*/a.log", "logs/a.log", true),
        ("docs/", "docs/README.md", true),
        ("/docs", "docs/README.md", true),
        ("./docs", "docs/README.md", true),
        ("docs/../src", "src/main.rs", true),
        // "**" at the start is a suffix shortcut that is laxer than the glob it stands for.
        ("**foo", "barfoo", true),
        ("  spaced  ", "spaced", true),
        ("*", "a/b", true),
        ("?", "ab", false),
        ("[ä]", "ä", true),
        ("[\\]a]", "]", true),
        ("[x\\-]", "-", true),
        ("[x\\-]", "z", false),
        ("[a-ζ]*", "α", true),
        ("[[]", "[", true),
        ("x[&&]", "x&", true),
        ("a\\<b", "a<b", true),
    ];
    for (pattern, path, want) in cases {
        assert_eq!(
            pm(&[pattern]).matches_or_parent(path),
            *want,
            "pattern {pattern:?} on {path:?}"
        );
    }
}

/// Lists of patterns: the last one that matches decides; `!` re-includes.
#[test]
fn pattern_lists() {
    let cases: &[(&[&str], &str, bool)] = &[
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            true,
        ),
        (
            &["**", "!dist/*.whl"],
            "dist/proxy-1.0-py3-none-any.whl",
            false,
        ),
        (&["!fileutils.go", "*.go"], "fileutils.go", true),
        (&["*.go", "!fileutils.go"], "fileutils.go", false),
        (&["docs", "!docs/README.md"], "docs/README.md", false),
        (&["docs", "!docs/README.md"], "docs/other.md", true),
        (&["docs/", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/README.md", false),
        (&["*.md", "!README.md"], "README.md", false),
        (&["*.md", "!README.md", "README*"], "README.md", true),
        (&["a", "!a/b", "a/b/c"], "a/b/c", true),
        (&["a", "!a/b", "a/b/c"], "a/b/d", false),
        (&[], "anything", false),
        (&["", "   "], "anything", false),
    ];
    for (patterns, path, want) in cases {
        assert_eq!(
            pm(patterns).matches_or_parent(path),
            *want,
            "{patterns:?} on {path:?}"
        );
    }
    assert!(PatternMatcher::new(&["!".to_string()]).is_err());
    assert!(PatternMatcher::new(&["  ! ".to_string()]).is_err());
    assert!(pm(&["docs", "!docs/README.md"]).exclusions);
    assert!(!pm(&["docs"]).exclusions);
}

/// Carrying per-pattern results down the tree gives the same answers as checking parents.
#[test]
fn parent_results_agree_with_parent_matching() {
    let lists: &[&[&str]] = &[&["a", "!a/b/c"], &["**/*.txt", "!keep/**"], &["*", "!*/x"]];
    let paths = [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/d.txt",
        "keep/x.txt",
        "z/x",
        "a/q/c",
    ];
    for patterns in lists {
        let m = pm(patterns);
        for path in paths {
            let parts: Vec<&str> = path.split('/').collect();
            let mut info = Vec::new();
            let mut result = false;
            for i in 0..parts.len() {
                let p = parts[..=i].join("/");
                (result, info) = m.matches_using_parent(&p, &info);
            }
            assert_eq!(result, m.matches_or_parent(path), "{patterns:?} on {path}");
        }
    }
}

/// With per-pattern parent results, an exception is only checked against the path itself once
/// the parent's results are known: `!a/b` does not rescue `a/b/c` from `a/*/c` (fsutil walks
/// with these results, so `a/b/c` is excluded), although checking every parent would.
#[test]
fn parent_results_quirk() {
    let m = pm(&["a/*/c", "!a/b"]);
    let (_, a) = m.matches_using_parent("a", &[]);
    let (_, ab) = m.matches_using_parent("a/b", &a);
    assert!(m.matches_using_parent("a/b/c", &ab).0);
    assert!(!m.matches_or_parent("a/b/c"));
}

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, data).unwrap();
}

/// Paths that `send` would emit for `root` with `filter`, in order.
fn walk_paths(root: &Path, filter: &Filter) -> Vec<String> {
    walk_stats(root, filter)
        .into_iter()
        .map(|s| s.path)
        .collect()
}

fn walk_stats(root: &Path, filter: &Filter) -> Vec<Stat> {
    let resolved = filter.resolve(root).unwrap();
    let mut out = Vec::new();
    walk::walk(root, &resolved, &mut |s| {
        out.push(s);
        Ok(())
    })
    .unwrap();
    out
}

fn filter(includes: &[&str], excludes: &[&str], follow: &[&str]) -> Filter {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Filter::new(v(includes), v(excludes), v(follow)).unwrap()
}

#[test]
fn walk_order_is_bytewise_preorder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in ["a.txt", "a-b", "A", "ä", "b", "a/b", "a/a", "_", "Z/z"] {
        write(&root.join(name), b"x");
    }
    fs::create_dir(root.join("empty")).unwrap();
    assert_eq!(
        walk_paths(root, &Filter::all()),
        [
            "A", "Z", "Z/z", "_", "a", "a/a", "a/b", "a-b", "a.txt", "b", "empty", "ä"
        ]
    );
}

#[test]
fn excluded_dir_with_reincluded_child_sends_parents_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in ["a/b/c", "a/b/d", "a/x", "a/y/z", "b", "c/d"] {
        write(&root.join(name), b"x");
    }
    assert_eq!(
        walk_paths(root, &filter(&[], &["a", "!a/b/c"], &[])),
        ["a", "a/b", "a/b/c", "b", "c", "c/d"]
    );
    // Without an exception, the excluded directory is pruned entirely.
    assert_eq!(walk_paths(root, &filter(&[], &["a", "c/"], &[])), ["b"]);
    // Wildcard exceptions make the walk look everywhere under excluded directories.
    assert_eq!(
        walk_paths(root, &filter(&[], &["*", "!**/z"], &[])),
        ["a", "a/y", "a/y/z"]
    );
    // A directory matched only through a wildcard parent is still excluded.
    assert_eq!(
        walk_paths(root, &filter(&[], &["*/b"], &[])),
        ["a", "a/x", "a/y", "a/y/z", "b", "c", "c/d"]
    );
}

#[test]
fn include_patterns_keep_parents_of_included_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in ["a/b/c", "a/b/d", "a/x", "b", "c/d.txt", "c/e.md"] {
        write(&root.join(name), b"x");
    }
    assert_eq!(
        walk_paths(root, &filter(&["a/b"], &[], &[])),
        ["a", "a/b", "a/b/c", "a/b/d"]
    );
    assert_eq!(
        walk_paths(root, &filter(&["**/*.txt"], &[], &[])),
        ["c", "c/d.txt"]
    );
    assert_eq!(
        walk_paths(root, &filter(&["a", "c"], &["a/b/d", "*/*.md"], &[])),
        ["a", "a/b", "a/b/c", "a/x", "c", "c/d.txt"]
    );
}

#[test]
fn followpaths_resolve_symlinks_inside_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in ["real/file", "real/other", "dir/target", "unrelated"] {
        write(&root.join(name), b"x");
    }
    symlink("real", root.join("link")).unwrap();
    symlink("/dir/target", root.join("abs")).unwrap();
    assert_eq!(
        walk_paths(root, &filter(&[], &[], &["link/file", "abs", "missing/x"])),
        ["abs", "dir", "dir/target", "link", "real", "real/file"]
    );
    // "." (or a link to the root) means everything.
    assert_eq!(walk_paths(root, &filter(&[], &[], &["."])).len(), 8);
}

#[test]
fn stat_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("exec"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("exec"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&root.join("suid"), b"x");
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("exec", root.join("link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let stats: BTreeMap<String, Stat> = walk_stats(root, &Filter::all())
        .into_iter()
        .map(|s| (s.path.clone(), s))
        .collect();
    let exec = &stats["exec"];
    assert_eq!(exec.mode, 0o755);
    assert_eq!(exec.size, 10);
    let meta = fs::symlink_metadata(root.join("exec")).unwrap();
    assert_eq!(
        exec.mod_time,
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
    );
    assert_eq!((exec.uid, exec.gid), (meta.uid(), meta.gid()));
    assert_eq!(stats["suid"].mode, mode::SETUID | 0o750);
    assert_eq!(stats["sticky"].mode, mode::DIR | mode::STICKY | 0o777);
    assert_eq!(stats["sticky"].size, 0);
    assert_eq!(stats["link"].mode, mode::SYMLINK | 0o777);
    assert_eq!(stats["link"].linkname, "exec");
    assert_eq!(stats["link"].size, 4);
    assert_eq!(stats["fifo"].mode & mode::TYPE, mode::NAMED_PIPE);
    // /dev/null is character device 1:3 on every Linux system; an include pattern keeps the
    // walk of /dev to that one entry.
    let null = walk_stats(Path::new("/dev"), &filter(&["null"], &[], &[]));
    assert_eq!(null.len(), 1);
    assert_eq!(null[0].path, "null");
    assert_eq!(null[0].mode, mode::DEVICE | mode::CHAR_DEVICE | 0o666);
    assert_eq!((null[0].devmajor, null[0].devminor), (1, 3));
    assert_eq!(walk::dev_major(0x0801), 8);
    assert_eq!(walk::dev_minor(0x0801), 1);
    assert_eq!(walk::dev_minor(0x1234_5678), 0x12378);
}

#[test]
fn hardlinks_point_at_the_first_kept_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("b/orig"), b"hello");
    fs::hard_link(root.join("b/orig"), root.join("c")).unwrap();
    fs::hard_link(root.join("b/orig"), root.join("a")).unwrap();
    let stats = walk_stats(root, &Filter::all());
    let by: BTreeMap<_, _> = stats.iter().map(|s| (s.path.as_str(), s)).collect();
    assert_eq!(by["a"].linkname, "");
    assert_eq!(by["b/orig"].linkname, "a");
    assert_eq!(by["c"].linkname, "a");
    assert_eq!(by["c"].mode, 0o644 & !umask_bits());
    // When the first path is filtered out, the first one kept becomes the original.
    let stats = walk_stats(root, &filter(&[], &["a"], &[]));
    let by: BTreeMap<_, _> = stats.iter().map(|s| (s.path.as_str(), s)).collect();
    assert_eq!(by["b/orig"].linkname, "");
    assert_eq!(by["b/orig"].size, 5);
    assert_eq!(by["c"].linkname, "b/orig");
}

fn umask_bits() -> u32 {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"").unwrap();
    let m = fs::metadata(dir.path().join("f")).unwrap().mode() & 0o777;
    0o666 & !m
}

/// A snapshot of a tree for comparison: type+mode, size, mtime, link target, content digest,
/// and for multiply-linked files the first path of the inode.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().into_string().unwrap();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let mut desc = format!("mode={:o}", meta.mode());
            if meta.file_type().is_symlink() {
                desc += &format!(" -> {}", fs::read_link(e.path()).unwrap().display());
            } else if meta.is_file() {
                desc += &format!(" size={} sum={:x}", meta.len(), checksum(&e.path()));
                if meta.nlink() > 1 {
                    let first = inodes.entry(meta.ino()).or_insert_with(|| r.clone());
                    desc += &format!(" inode-of={first}");
                }
            }
            desc += &format!(" mtime={}.{:09}", meta.mtime(), meta.mtime_nsec());
            if meta.is_dir() {
                stack.push((e.path(), r.clone()));
            }
            out.insert(r, desc);
        }
    }
    out
}

/// FNV-1a over the file, streamed.
fn checksum(path: &Path) -> u64 {
    let mut f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut h: u64 = 0xcbf29ce484222325;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h;
        }
        for b in &buf[..n] {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
}

async fn loopback(
    src: &Path,
    dst: &Path,
    filter: Filter,
) -> (Arc<TransferStats>, Arc<TransferStats>) {
    let (to_receiver, from_sender) = mpsc::channel::<Vec<Packet>>(16);
    let (to_sender, from_receiver) = mpsc::channel::<Packet>(16);
    let send_stats = Arc::new(TransferStats::default());
    let recv_stats = Arc::new(TransferStats::default());
    let sending = send(
        src.to_path_buf(),
        filter,
        ReceiverStream::new(from_receiver).map(Ok),
        to_receiver,
        send_stats.clone(),
    );
    let receiving = receive(
        dst.to_path_buf(),
        ReceiverStream::new(from_sender)
            .flat_map(futures_util::stream::iter)
            .map(Ok),
        to_sender,
        recv_stats.clone(),
    );
    let (s, r) = tokio::join!(sending, receiving);
    s.unwrap();
    r.unwrap();
    (send_stats, recv_stats)
}

fn build_tree(root: &Path) {
    write(&root.join("plain.txt"), b"hello\n");
    write(&root.join("empty-file"), b"");
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    write(&root.join("dir/sub/deep.txt"), b"deep");
    write(&root.join("ä/日本.txt"), "non-ascii".as_bytes());
    write(&root.join("exec.sh"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&root.join("readonly"), b"ro");
    fs::set_permissions(root.join("readonly"), fs::Permissions::from_mode(0o444)).unwrap();
    write(&root.join("suid"), b"s");
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("ro-dir")).unwrap();
    write(&root.join("ro-dir/inside"), b"i");
    fs::set_permissions(root.join("ro-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    symlink("plain.txt", root.join("link-rel")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    symlink("/etc/hostname", root.join("link-abs")).unwrap();
    symlink("../../outside", root.join("dir/link-outside")).unwrap();
    symlink("sub", root.join("dir/link-dir")).unwrap();
    fs::hard_link(root.join("plain.txt"), root.join("dir/hard")).unwrap();
    fs::hard_link(root.join("plain.txt"), root.join("z-hard")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    // 64 MiB of non-repeating data, so that misplaced chunks show.
    let mut f = fs::File::create(root.join("big.bin")).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut buf = Vec::with_capacity(1 << 20);
    for _ in 0..64 {
        buf.clear();
        for _ in 0..(1 << 17) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    drop(f);
    // Distinct, nanosecond-precise times on a few entries.
    for (name, ns) in [
        ("plain.txt", 1_234_567_891_i64),
        ("dir/sub", 987_654_321),
        ("link-rel", 5),
    ] {
        let ts = rustix::fs::Timespec {
            tv_sec: 1_600_000_000 + ns / 1_000,
            tv_nsec: ns % 1_000_000_000,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            root.join(name),
            &rustix::fs::Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_reproduces_the_tree() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    build_tree(src.path());
    let before = snapshot(src.path());
    let (sent, received) = loopback(src.path(), &dst.path().join("out"), Filter::all()).await;
    assert_eq!(snapshot(&dst.path().join("out")), before);
    let entries = before.len() as u64;
    assert_eq!(sent.entries.load(Ordering::Relaxed), entries);
    assert_eq!(received.entries.load(Ordering::Relaxed), entries);
    // Regular files with data: plain, empty-file, deep, 日本, exec, readonly, suid, inside, big.
    assert_eq!(sent.files.load(Ordering::Relaxed), 9);
    assert_eq!(received.files.load(Ordering::Relaxed), 9);
    let bytes = 64 * 1024 * 1024 + 6 + 4 + 9 + 18 + 2 + 1 + 1;
    assert_eq!(sent.bytes.load(Ordering::Relaxed), bytes);
    assert_eq!(received.bytes.load(Ordering::Relaxed), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_with_exclusions_merges_into_existing_dest() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    for name in ["keep.txt", "ex/a", "ex/b/keep", "ex/b/drop", "logs/x.log"] {
        write(&src.path().join(name), name.as_bytes());
    }
    write(&dst.path().join("already-there"), b"old");
    write(&dst.path().join("keep.txt"), b"to be replaced");
    let filter = filter(&[], &["ex", "!ex/b/keep", "*.log", "logs"], &[]);
    loopback(src.path(), dst.path(), filter).await;
    let mut got: Vec<String> = snapshot(dst.path()).into_keys().collect();
    got.sort();
    assert_eq!(
        got,
        ["already-there", "ex", "ex/b", "ex/b/keep", "keep.txt"]
    );
    assert_eq!(fs::read(dst.path().join("keep.txt")).unwrap(), b"keep.txt");
    assert_eq!(
        fs::read(dst.path().join("ex/b/keep")).unwrap(),
        b"ex/b/keep"
    );
}

/// Runs `receive` against a scripted sender and returns its result.
async fn receive_script(
    packets: Vec<Packet>,
) -> (Result<(), ReceiveError>, PathBuf, tempfile::TempDir) {
    let dst = tempfile::tempdir().unwrap();
    let out = dst.path().join("out");
    let (tx, rx) = mpsc::channel(packets.len() + 1);
    for p in packets {
        tx.send(p).await.unwrap();
    }
    drop(tx);
    let (back_tx, _back_rx) = mpsc::channel(64);
    let r = receive(
        out.clone(),
        ReceiverStream::new(rx).map(Ok),
        back_tx,
        Arc::default(),
    )
    .await;
    (r, out, dst)
}

fn stat_packet(path: &str, mode: u32, linkname: &str) -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        stat: Some(Stat {
            path: path.into(),
            mode,
            linkname: linkname.into(),
            ..Stat::default()
        }),
        ..Packet::default()
    }
}

#[tokio::test]
async fn receiver_rejects_escaping_and_unordered_paths() {
    for (packets, want) in [
        (vec![stat_packet("../x", 0o644, "")], "escapes"),
        (vec![stat_packet("/etc/x", 0o644, "")], "absolute"),
        (vec![stat_packet("a/./b", 0o644, "")], "unclean"),
        (
            vec![stat_packet("b", 0o644, ""), stat_packet("a", 0o644, "")],
            "out of order",
        ),
        (
            vec![stat_packet("a", 0o644, ""), stat_packet("a", 0o644, "")],
            "out of order",
        ),
        (vec![stat_packet("a/b", 0o644, "")], "out of order"),
        // A symlink is not a directory: nothing may be written through it.
        (
            vec![
                stat_packet("a", mode::SYMLINK | 0o777, "/etc"),
                stat_packet("a/passwd", 0o644, ""),
            ],
            "out of order",
        ),
        (vec![stat_packet("a", 0o644, "missing")], "unknown path"),
    ] {
        let (r, out, _keep) = receive_script(packets).await;
        let err = r.expect_err("should fail").to_string();
        assert!(err.contains(want), "{err}");
        assert!(!out.join("etc").exists());
    }
}

#[tokio::test]
async fn sender_rejects_unknown_file_ids() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f"), b"x");
    fs::create_dir(src.path().join("d")).unwrap();
    let (to_receiver, from_sender) = mpsc::channel::<Vec<Packet>>(16);
    let mut from_sender = ReceiverStream::new(from_sender).flat_map(futures_util::stream::iter);
    let (to_sender, from_receiver) = mpsc::channel::<Packet>(16);
    let sending = tokio::spawn(send(
        src.path().to_path_buf(),
        Filter::all(),
        ReceiverStream::new(from_receiver).map(Ok),
        to_receiver,
        Arc::default(),
    ));
    // STAT d (id 0), STAT f (id 1), end of stats.
    let mut ids = Vec::new();
    while let Some(p) = from_sender.next().await {
        ids.push(p.stat.as_ref().map(|s| s.path.clone()));
        if p.stat.is_none() {
            break;
        }
    }
    assert_eq!(ids, [Some("d".to_string()), Some("f".to_string()), None]);
    // The directory's id carries no data.
    to_sender
        .send(Packet {
            r#type: PacketType::PacketReq as i32,
            id: 0,
            ..Packet::default()
        })
        .await
        .unwrap();
    let err = sending.await.unwrap().expect_err("should fail");
    assert!(matches!(err, SendError::UnknownFileId(0)), "{err}");
}

/// A socket is sent as a regular file (fsutil clears the socket bit) that cannot be opened, so
/// it arrives as an empty file: the same result as with buildctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_arrive_as_empty_files() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(src.path().join("sock")).unwrap();
    write(&src.path().join("z"), b"data");
    let stats = walk_stats(src.path(), &Filter::all());
    assert_eq!(stats[0].mode & mode::TYPE, 0, "socket bit cleared");
    let (sent, _) = loopback(src.path(), dst.path(), Filter::all()).await;
    let meta = fs::symlink_metadata(dst.path().join("sock")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 0);
    assert_eq!(fs::read(dst.path().join("z")).unwrap(), b"data");
    assert_eq!(
        sent.files.load(Ordering::Relaxed),
        1,
        "only z had data to send"
    );
}

/// A walk error reaches the receiver as PACKET_ERR with the message, naming the file.
#[tokio::test]
async fn walk_errors_are_sent_as_packet_err() {
    use std::os::unix::ffi::OsStrExt;
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("ok"), b"x");
    fs::write(
        src.path().join(std::ffi::OsStr::from_bytes(b"bad\xff")),
        b"x",
    )
    .unwrap();
    let (to_receiver, from_sender) = mpsc::channel::<Vec<Packet>>(16);
    let mut from_sender = ReceiverStream::new(from_sender).flat_map(futures_util::stream::iter);
    let (_to_sender, from_receiver) = mpsc::channel::<Packet>(16);
    let err = send(
        src.path().to_path_buf(),
        Filter::all(),
        ReceiverStream::new(from_receiver).map(Ok),
        to_receiver,
        Arc::default(),
    )
    .await
    .expect_err("should fail");
    assert_eq!(
        err.to_string(),
        "cannot send bad\u{fffd}: its name is not valid UTF-8"
    );
    let mut last = None;
    while let Some(p) = from_sender.next().await {
        last = Some(p);
    }
    let last = last.unwrap();
    assert_eq!(last.r#type, PacketType::PacketErr as i32);
    assert_eq!(String::from_utf8_lossy(&last.data), err.to_string());
}

/// A context directory that does not exist is named in the error.
#[tokio::test]
async fn missing_root_is_a_clear_error() {
    let (to_receiver, _from_sender) = mpsc::channel::<Vec<Packet>>(1);
    let (_to_sender, from_receiver) = mpsc::channel::<Packet>(1);
    let err = send(
        PathBuf::from("/nonexistent/pf-context"),
        Filter::all(),
        ReceiverStream::new(from_receiver).map(Ok),
        to_receiver,
        Arc::default(),
    )
    .await
    .expect_err("should fail");
    assert_eq!(
        err.to_string(),
        "cannot use /nonexistent/pf-context as a directory to send: no such file or directory"
    );
}

/// Many small files: REQs pile up far beyond any queue size while STATs still stream, and
/// every file arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_many_small_files() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    for d in 0..100 {
        for f in 0..200 {
            write(
                &src.path().join(format!("d{d:03}/f{f:03}")),
                format!("{d}/{f}").as_bytes(),
            );
        }
    }
    let (sent, received) = loopback(src.path(), dst.path(), Filter::all()).await;
    assert_eq!(sent.entries.load(Ordering::Relaxed), 20_100);
    assert_eq!(received.files.load(Ordering::Relaxed), 20_000);
    assert_eq!(fs::read(dst.path().join("d042/f199")).unwrap(), b"42/199");
}

/// A receiver that already has everything (a warm rebuild) asks for nothing: the STATs leave
/// in a few large batches, not one queue entry (and one write) per file, and the sender ends
/// on the receiver's FIN having read no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_leave_in_batches() {
    let src = tempfile::tempdir().unwrap();
    for d in 0..10 {
        for f in 0..300 {
            write(&src.path().join(format!("d{d}/f{f:03}")), b"x");
        }
    }
    let (to_receiver, mut from_sender) = mpsc::channel::<Vec<Packet>>(4);
    let (to_sender, from_receiver) = mpsc::channel::<Packet>(4);
    let stats = Arc::new(TransferStats::default());
    let sending = tokio::spawn(send(
        src.path().to_path_buf(),
        Filter::all(),
        ReceiverStream::new(from_receiver).map(Ok),
        to_receiver,
        stats.clone(),
    ));
    let (mut batches, mut entries) = (0, 0);
    loop {
        let batch = from_sender.recv().await.unwrap();
        batches += 1;
        entries += batch.iter().filter(|p| p.stat.is_some()).count();
        if batch.last().is_some_and(|p| p.stat.is_none()) {
            break;
        }
    }
    assert_eq!(entries, 3_010);
    // About 40 bytes a STAT here (with the packet's own overhead), 32 KiB a batch.
    assert!(batches <= 6, "{batches} batches for {entries} entries");
    to_sender
        .send(Packet {
            r#type: PacketType::PacketFin as i32,
            ..Packet::default()
        })
        .await
        .unwrap();
    let fin = from_sender.recv().await.unwrap();
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].r#type, PacketType::PacketFin as i32);
    sending.await.unwrap().unwrap();
    assert_eq!(stats.files.load(Ordering::Relaxed), 0);
    assert_eq!(stats.entries.load(Ordering::Relaxed), 3_010);
}

/// Extended attributes travel with the file (Linux cannot hold the `com.apple.*` ones that
/// fsutil skips, so that rule is not exercised here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs_travel() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    write(&file, b"x");
    let set = |name: &str, value: &[u8]| {
        rustix::fs::lsetxattr(&file, name, value, rustix::fs::XattrFlags::empty()).unwrap()
    };
    set("user.pf", b"value");
    set("user.empty", b"");
    let stats = walk_stats(src.path(), &Filter::all());
    let mut names: Vec<&String> = stats[0].xattrs.keys().collect();
    names.sort();
    assert_eq!(names, ["user.empty", "user.pf"]);
    assert_eq!(&stats[0].xattrs["user.pf"][..], b"value");
    loopback(src.path(), dst.path(), Filter::all()).await;
    let mut value = Vec::with_capacity(16);
    rustix::fs::lgetxattr(
        dst.path().join("f"),
        "user.pf",
        rustix::buffer::spare_capacity(&mut value),
    )
    .unwrap();
    assert_eq!(value, b"value");
}

#[tokio::test]
async fn an_interrupted_transfer_leaves_no_temporary_files() {
    let mut file = stat_packet("f", 0o644, "");
    if let Some(stat) = file.stat.as_mut() {
        stat.size = 10;
    }
    let end_of_stats = Packet {
        r#type: PacketType::PacketStat as i32,
        ..Packet::default()
    };
    let half = Packet {
        r#type: PacketType::PacketData as i32,
        id: 0,
        data: bytes::Bytes::from_static(b"hello"),
        ..Packet::default()
    };
    // The sender goes away after half the file: no EOF, no FIN.
    let (r, out, _keep) = receive_script(vec![file, end_of_stats, half]).await;
    assert!(r.is_err(), "an unfinished transfer is an error");
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// [`receive_script`], also returning every packet the receiver sent back.
async fn receive_script_replies(
    packets: Vec<Packet>,
) -> (
    Result<(), ReceiveError>,
    PathBuf,
    tempfile::TempDir,
    Vec<Packet>,
) {
    let dst = tempfile::tempdir().unwrap();
    let out = dst.path().join("out");
    let (tx, rx) = mpsc::channel(packets.len() + 1);
    // Room for a REQ per packet and the FIN or ERR: the receiver never waits on us.
    let (back_tx, mut back_rx) = mpsc::channel(packets.len() + 2);
    for p in packets {
        tx.send(p).await.unwrap();
    }
    drop(tx);
    let r = receive(
        out.clone(),
        ReceiverStream::new(rx).map(Ok),
        back_tx,
        Arc::default(),
    )
    .await;
    let mut replies = Vec::new();
    while let Ok(p) = back_rx.try_recv() {
        replies.push(p);
    }
    (r, out, dst, replies)
}

/// `count` regular files `f0000`... as STATs (ids 0 to count-1).
fn file_stats(count: u32) -> Vec<Packet> {
    (0..count)
        .map(|i| stat_packet(&format!("f{i:04}"), 0o644, ""))
        .collect()
}

fn eof_packet(id: u32) -> Packet {
    Packet {
        r#type: PacketType::PacketData as i32,
        id,
        ..Packet::default()
    }
}

fn end_of_stats() -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        ..Packet::default()
    }
}

fn req_ids(replies: &[Packet]) -> Vec<u32> {
    replies
        .iter()
        .filter(|p| p.r#type == PacketType::PacketReq as i32)
        .map(|p| p.id)
        .collect()
}

/// However many files are announced, only a window of them is asked for at once: data for
/// a file not asked for yet is refused, and no temporary file is left.
#[tokio::test]
async fn receiver_asks_for_a_bounded_window_of_files() {
    let mut script = file_stats(600);
    script.push(end_of_stats());
    script.push(eof_packet(599));
    let (r, out, _keep, replies) = receive_script_replies(script).await;
    let err = r.unwrap_err();
    assert!(
        matches!(err, ReceiveError::UnexpectedData(599)),
        "unexpected: {err}"
    );
    assert_eq!(req_ids(&replies), (0..256).collect::<Vec<_>>());
    let left: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Files beyond the window are asked for, in order, as earlier ones complete; a hardlink to
/// a file still waiting for its turn is made once that file is in place.
#[tokio::test]
async fn receiver_slides_its_window_and_links_waiting_files() {
    let mut script = file_stats(600);
    script.push(stat_packet("z-link", 0o644, "f0599"));
    script.push(end_of_stats());
    script.extend((0..600).map(eof_packet));
    let (r, out, _keep, replies) = receive_script_replies(script).await;
    r.unwrap();
    assert_eq!(req_ids(&replies), (0..600).collect::<Vec<_>>());
    assert_eq!(
        replies.last().map(|p| p.r#type),
        Some(PacketType::PacketFin as i32)
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 601);
    let ino = |name: &str| fs::metadata(out.join(name)).unwrap().ino();
    assert_eq!(ino("z-link"), ino("f0599"));
}

/// Hardlink targets are found in walk order, which compares paths component by component:
/// `a/b` comes before `a-b` although `-` sorts before `/` byte-wise.
#[tokio::test]
async fn receiver_finds_link_targets_in_walk_order() {
    let script = vec![
        stat_packet("a", mode::DIR | 0o755, ""),
        stat_packet("a/b", 0o644, ""),
        stat_packet("a-b", 0o644, ""),
        stat_packet("z1", 0o644, "a/b"),
        stat_packet("z2", 0o644, "a-b"),
        end_of_stats(),
        eof_packet(1),
        eof_packet(2),
    ];
    let (r, out, _keep, _) = receive_script_replies(script).await;
    r.unwrap();
    let ino = |name: &str| fs::metadata(out.join(name)).unwrap().ino();
    assert_eq!(ino("z1"), ino("a/b"));
    assert_eq!(ino("z2"), ino("a-b"));
}
