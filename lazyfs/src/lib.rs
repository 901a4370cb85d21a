//! A FUSE filesystem for power-loss tests. File data lives in memory twice: as last written
//! and as last synced (`fsync`/`fdatasync`). [`LazyFs::power_cut`] throws away everything not
//! synced, like a machine losing power with a volatile page cache; in [`Cut::TornLastWrite`]
//! mode the unsynced writes reach "disk" in order except the last one, of which only a part of
//! its first page lands (a torn write).
//!
//! Directory operations (create, unlink, rename) are durable at once, as on a journaling
//! filesystem; only file data is lazy, truncates included — the same model as the LazyFS tool
//! Jepsen uses.
//!
//! Mounting needs `/dev/fuse`, `fusermount3` (Debian `fuse3`) and the right to mount (root in
//! CI). A cut happens with the filesystem unmounted, so no kernel cache outlives it:
//! [`Mounted::power_cut`] unmounts, cuts and mounts again.

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};
use libc::{EEXIST, EINVAL, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Attributes are not cached by the kernel: every stat asks us.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = fuser::FUSE_ROOT_ID;
const PAGE: usize = 4096;

/// Why FUSE cannot be mounted on this machine, if it cannot (no `/dev/fuse`, no
/// `fusermount3`). Tests call it first: with `CHATMQ_REQUIRE_SERVICES` set (CI) a missing piece
/// is a failure; otherwise the test says `skipped: …` and returns.
pub fn skip_without_fuse() -> bool {
    let why = if !Path::new("/dev/fuse").exists() {
        "/dev/fuse missing"
    } else if std::process::Command::new("fusermount3")
        .arg("--version")
        .output()
        .is_err()
    {
        "fusermount3 missing (Debian package fuse3)"
    } else {
        return false;
    };
    assert!(
        std::env::var_os("CHATMQ_REQUIRE_SERVICES").is_none(),
        "FUSE needed: {why}"
    );
    eprintln!("skipped: {why}");
    true
}

/// What a power cut keeps of the writes since the last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing: every file is as it was last synced.
    Clean,
    /// Every unsynced write but the last, and the first `1..PAGE` bytes of the last one
    /// (`seed` picks how many).
    TornLastWrite { seed: u64 },
}

/// What happened to one file at a cut (for the filesystem's own tests and for reports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced writes.
    pub files_rolled_back: usize,
    /// Unsynced bytes written that were lost.
    pub bytes_lost: usize,
    /// Files whose last unsynced write was torn.
    pub torn: usize,
}

#[derive(Debug)]
enum Op {
    Write(u64, Vec<u8>),
    Truncate(u64),
}

#[derive(Debug)]
enum Node {
    File {
        data: Vec<u8>,
        synced: Vec<u8>,
        /// Writes and truncates since the last sync, in order.
        unsynced: Vec<Op>,
        perm: u16,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        perm: u16,
    },
}

fn apply(data: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(off, bytes) => {
            let off = *off as usize;
            if data.len() < off + bytes.len() {
                data.resize(off + bytes.len(), 0);
            }
            data[off..off + bytes.len()].copy_from_slice(bytes);
        }
        Op::Truncate(len) => data.resize(*len as usize, 0),
    }
}

#[derive(Debug)]
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

impl State {
    fn new() -> State {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node::Dir {
                entries: BTreeMap::new(),
                perm: 0o755,
            },
        );
        State {
            nodes,
            next_ino: ROOT + 1,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size) = match self.nodes.get(&ino)? {
            Node::File { data, perm, .. } => (FileType::RegularFile, *perm, data.len() as u64),
            Node::Dir { perm, entries } => (FileType::Directory, *perm, entries.len() as u64),
        };
        let now = SystemTime::now();
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            // SAFETY: getuid/getgid cannot fail.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn entries(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, i32> {
        match self.nodes.get_mut(&dir) {
            Some(Node::Dir { entries, .. }) => Ok(entries),
            Some(Node::File { .. }) => Err(ENOTDIR),
            None => Err(ENOENT),
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<u64, i32> {
        let ino = self.next_ino;
        let entries = self.entries(parent)?;
        if entries.contains_key(name) {
            return Err(EEXIST);
        }
        entries.insert(name.to_owned(), ino);
        self.nodes.insert(ino, node);
        self.next_ino += 1;
        Ok(ino)
    }

    /// A new empty file `name` in `parent`: its attributes.
    fn create_file(&mut self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr, i32> {
        let file = Node::File {
            data: Vec::new(),
            synced: Vec::new(),
            unsynced: Vec::new(),
            perm: (mode & 0o7777) as u16,
        };
        let ino = self.add(parent, name, file)?;
        self.attr(ino).ok_or(ENOENT)
    }

    fn sync(&mut self, ino: u64) {
        if let Some(Node::File {
            data,
            synced,
            unsynced,
            ..
        }) = self.nodes.get_mut(&ino)
        {
            synced.clone_from(data);
            unsynced.clear();
        }
    }

    fn cut(&mut self, how: Cut) -> CutReport {
        let mut report = CutReport::default();
        for node in self.nodes.values_mut() {
            let Node::File {
                data,
                synced,
                unsynced,
                ..
            } = node
            else {
                continue;
            };
            if unsynced.is_empty() {
                continue;
            }
            report.files_rolled_back += 1;
            let mut kept = synced.clone();
            if let Cut::TornLastWrite { seed } = how {
                let last = unsynced.len() - 1;
                for op in &unsynced[..last] {
                    apply(&mut kept, op);
                }
                match &unsynced[last] {
                    Op::Write(off, bytes) => {
                        // 1..limit bytes of the write's first page land (a one-byte write
                        // cannot tear).
                        let limit = PAGE.min(bytes.len());
                        let part = if limit <= 1 {
                            limit
                        } else {
                            1 + seed as usize % (limit - 1)
                        };
                        apply(&mut kept, &Op::Write(*off, bytes[..part].to_vec()));
                        report.bytes_lost += bytes.len() - part;
                        report.torn += 1;
                    }
                    op => apply(&mut kept, op),
                }
            } else {
                report.bytes_lost += unsynced
                    .iter()
                    .map(|op| match op {
                        Op::Write(_, b) => b.len(),
                        Op::Truncate(_) => 0,
                    })
                    .sum::<usize>();
            }
            *data = kept.clone();
            *synced = kept;
            unsynced.clear();
        }
        report
    }
}

/// The filesystem; clones share one state, so it can be mounted again after a cut.
#[derive(Clone, Debug)]
pub struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl Default for LazyFs {
    fn default() -> Self {
        LazyFs::new()
    }
}

impl LazyFs {
    pub fn new() -> LazyFs {
        LazyFs {
            state: Arc::new(Mutex::new(State::new())),
        }
    }

    /// Drops what was not synced (see [`Cut`]). Call it while unmounted.
    pub fn power_cut(&self, how: Cut) -> CutReport {
        self.state.lock().cut(how)
    }

    /// Mounts at `dir` (which must exist) in a background thread.
    pub fn mount(&self, dir: &Path) -> std::io::Result<Mounted> {
        let options = [
            MountOption::FSName("chatmq-lazyfs".into()),
            MountOption::RW,
            MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount2(self.clone(), dir, &options)?;
        Ok(Mounted {
            fs: self.clone(),
            dir: dir.to_owned(),
            session: Some(session),
        })
    }
}

/// A mounted [`LazyFs`]; unmounted on drop.
pub struct Mounted {
    fs: LazyFs,
    dir: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    /// Power loss: unmounts (every process using the files must be gone, e.g. SIGKILLed),
    /// drops the unsynced data and mounts again at the same place.
    pub fn power_cut(&mut self, how: Cut) -> std::io::Result<CutReport> {
        if let Some(s) = self.session.take() {
            s.join();
        }
        let report = self.fs.power_cut(how);
        let session = self.fs.mount(&self.dir)?.session.take();
        self.session = session;
        Ok(report)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.join();
        }
    }
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state.lock();
        let ino = match s.entries(parent) {
            Ok(e) => e.get(name).copied(),
            Err(e) => return reply.error(e),
        };
        match ino.and_then(|i| s.attr(i)) {
            Some(a) => reply.entry(&TTL, &a, 0),
            None => reply.error(ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.state.lock().attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state.lock();
        match s.nodes.get_mut(&ino) {
            Some(Node::File {
                data,
                unsynced,
                perm,
                ..
            }) => {
                if let Some(len) = size {
                    let op = Op::Truncate(len);
                    apply(data, &op);
                    unsynced.push(op);
                }
                if let Some(m) = mode {
                    *perm = (m & 0o7777) as u16;
                }
            }
            Some(Node::Dir { perm, .. }) => {
                if size.is_some() {
                    return reply.error(EISDIR);
                }
                if let Some(m) = mode {
                    *perm = (m & 0o7777) as u16;
                }
            }
            None => return reply.error(ENOENT),
        }
        match s.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(ENOENT),
        }
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.state.lock().create_file(parent, name, mode) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.state.lock().create_file(parent, name, mode) {
            Ok(a) => reply.created(&TTL, &a, 0, 0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.state.lock();
        let dir = Node::Dir {
            entries: BTreeMap::new(),
            perm: (mode & 0o7777) as u16,
        };
        match s.add(parent, name, dir).map(|ino| s.attr(ino)) {
            Ok(Some(a)) => reply.entry(&TTL, &a, 0),
            Ok(None) => reply.error(ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state.lock();
        let removed = match s.entries(parent) {
            Ok(e) => e.remove(name),
            Err(e) => return reply.error(e),
        };
        match removed {
            // Open handles keep nothing of their own here: the data goes with the name.
            Some(ino) => {
                s.nodes.remove(&ino);
                reply.ok()
            }
            None => reply.error(ENOENT),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state.lock();
        let ino = match s.entries(parent).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(ENOENT),
            Err(e) => return reply.error(e),
        };
        match s.nodes.get(&ino) {
            Some(Node::Dir { entries, .. }) if entries.is_empty() => {}
            Some(Node::Dir { .. }) => return reply.error(ENOTEMPTY),
            _ => return reply.error(ENOTDIR),
        }
        if let Ok(e) = s.entries(parent) {
            e.remove(name);
        }
        s.nodes.remove(&ino);
        reply.ok()
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state.lock();
        let ino = match s.entries(parent).map(|e| e.remove(name)) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(ENOENT),
            Err(e) => return reply.error(e),
        };
        match s
            .entries(newparent)
            .map(|e| e.insert(newname.to_owned(), ino))
        {
            Ok(Some(replaced)) => {
                s.nodes.remove(&replaced);
                reply.ok()
            }
            Ok(None) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.state.lock().nodes.get(&ino) {
            Some(_) => reply.opened(0, 0),
            None => reply.error(ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let s = self.state.lock();
        match s.nodes.get(&ino) {
            Some(Node::File { data, .. }) => {
                let start = (offset.max(0) as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Some(Node::Dir { .. }) => reply.error(EISDIR),
            None => reply.error(ENOENT),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        bytes: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if offset < 0 {
            return reply.error(EINVAL);
        }
        let mut s = self.state.lock();
        match s.nodes.get_mut(&ino) {
            Some(Node::File { data, unsynced, .. }) => {
                let op = Op::Write(offset as u64, bytes.to_vec());
                apply(data, &op);
                unsynced.push(op);
                reply.written(bytes.len() as u32);
            }
            Some(Node::Dir { .. }) => reply.error(EISDIR),
            None => reply.error(ENOENT),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        // close(2) is not a sync.
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        self.state.lock().sync(ino);
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _d: bool, reply: ReplyEmpty) {
        // Directory changes are durable at once (see the module comment).
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.state.lock().nodes.get(&ino) {
            Some(Node::Dir { .. }) => reply.opened(0, 0),
            Some(_) => reply.error(ENOTDIR),
            None => reply.error(ENOENT),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.state.lock();
        let Some(Node::Dir { entries, .. }) = s.nodes.get(&ino) else {
            return reply.error(ENOTDIR);
        };
        let mut all: Vec<(u64, FileType, OsString)> = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for (name, child) in entries {
            let kind = match s.nodes.get(child) {
                Some(Node::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        match self.state.lock().nodes.get(&ino) {
            Some(_) => reply.ok(),
            None => reply.error(ENOENT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_cut_keeps_exactly_what_was_synced() {
        let mut s = State::new();
        let a = s.create_file(ROOT, OsStr::new("a"), 0o644).expect("a").ino;
        write(&mut s, a, 0, b"hello ");
        s.sync(a);
        write(&mut s, a, 6, b"world");
        let b = s.create_file(ROOT, OsStr::new("b"), 0o644).expect("b").ino;
        write(&mut s, b, 0, b"never synced");
        let r = s.cut(Cut::Clean);
        assert_eq!(content(&s, a), b"hello ");
        assert_eq!(content(&s, b), b"");
        assert_eq!(
            r,
            CutReport {
                files_rolled_back: 2,
                bytes_lost: 17,
                torn: 0
            }
        );
        // The names stay (directory changes are durable at once).
        assert!(s.entries(ROOT).expect("root").contains_key(OsStr::new("b")));
    }

    #[test]
    fn a_torn_cut_keeps_earlier_writes_and_part_of_the_last() {
        let mut s = State::new();
        let a = s.create_file(ROOT, OsStr::new("a"), 0o644).expect("a").ino;
        write(&mut s, a, 0, b"0123");
        s.sync(a);
        write(&mut s, a, 4, b"4567");
        write(&mut s, a, 8, &[b'x'; 10_000]);
        let r = s.cut(Cut::TornLastWrite { seed: 99 });
        let kept = content(&s, a);
        assert_eq!(&kept[..8], b"01234567");
        let torn = kept.len() - 8;
        assert!((1..PAGE).contains(&torn), "{torn} bytes of the last write");
        assert_eq!(r.torn, 1);
    }

    #[test]
    fn truncates_are_data_too() {
        let mut s = State::new();
        let a = s.create_file(ROOT, OsStr::new("a"), 0o644).expect("a").ino;
        write(&mut s, a, 0, b"0123456789");
        s.sync(a);
        if let Some(Node::File { data, unsynced, .. }) = s.nodes.get_mut(&a) {
            apply(data, &Op::Truncate(2));
            unsynced.push(Op::Truncate(2));
        }
        s.cut(Cut::Clean);
        assert_eq!(content(&s, a), b"0123456789");
    }

    fn write(s: &mut State, ino: u64, off: u64, bytes: &[u8]) {
        if let Some(Node::File { data, unsynced, .. }) = s.nodes.get_mut(&ino) {
            let op = Op::Write(off, bytes.to_vec());
            apply(data, &op);
            unsynced.push(op);
        }
    }

    fn content(s: &State, ino: u64) -> Vec<u8> {
        match s.nodes.get(&ino) {
            Some(Node::File { data, .. }) => data.clone(),
            _ => Vec::new(),
        }
    }
}
