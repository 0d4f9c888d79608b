//! The file layer under the embedded log, behind a small trait so that tests can swap the
//! real file system for [`SimDisk`], a simulated disk that loses unsynced writes.
//!
//! A log is a directory of numbered segment files. Segments are only ever appended to,
//! except that recovery may cut a torn tail off the last one.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The operations the embedded log needs from a disk.
pub trait Storage: Send + Sync + 'static {
    /// The ids of the segments that exist, ascending.
    fn list_segments(&self) -> io::Result<Vec<u64>>;
    /// Creates an empty segment and makes its existence durable.
    fn create_segment(&self, id: u64) -> io::Result<()>;
    /// The segment's length in bytes, synced or not.
    fn segment_len(&self, id: u64) -> io::Result<u64>;
    /// Appends bytes to the end of the segment. They are not durable until `sync_segment`.
    fn append(&self, id: u64, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended to the segment so far durable (`fdatasync`).
    fn sync_segment(&self, id: u64) -> io::Result<()>;
    /// Reads from `offset` into `buf`; returns how many bytes were read (0 at the end).
    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Cuts the segment to `len` bytes and makes the cut durable.
    fn truncate_segment(&self, id: u64, len: u64) -> io::Result<()>;
}

/// Segments as files `<id>.seg` in one directory of the real file system.
pub struct FsStorage {
    dir: PathBuf,
    files: RwLock<HashMap<u64, Arc<File>>>,
}

impl FsStorage {
    /// Uses (and creates if needed) the directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        Ok(FsStorage {
            dir,
            files: RwLock::new(HashMap::new()),
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:012}.seg"))
    }

    fn file(&self, id: u64) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.read().expect("lock").get(&id) {
            return Ok(f.clone());
        }
        // O_APPEND makes every write land at the end; reads use pread and ignore it.
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(self.path(id))?,
        );
        self.files.write().expect("lock").insert(id, f.clone());
        Ok(f)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Storage for FsStorage {
    fn list_segments(&self) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".seg")
                && let Ok(id) = stem.parse::<u64>()
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn create_segment(&self, id: u64) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path(id))?
            .sync_all()?;
        // The new directory entry must be durable too, or a crash could lose the file.
        self.sync_dir()
    }

    fn segment_len(&self, id: u64) -> io::Result<u64> {
        Ok(self.file(id)?.metadata()?.len())
    }

    fn append(&self, id: u64, data: &[u8]) -> io::Result<()> {
        (&*self.file(id)?).write_all(data)
    }

    fn sync_segment(&self, id: u64) -> io::Result<()> {
        self.file(id)?.sync_data()
    }

    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.file(id)?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn truncate_segment(&self, id: u64, len: u64) -> io::Result<()> {
        let f = self.file(id)?;
        f.set_len(len)?;
        f.sync_all()
    }
}

/// A small deterministic random number generator (SplitMix64) for the simulator, so that
/// a seed reproduces a run exactly.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    data: Vec<u8>,
    /// How many leading bytes of `data` a crash keeps for certain.
    synced_len: usize,
}

#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<u64, SimFile>,
    /// Mutating operations left before the disk dies; `None` for never.
    ops_left: Option<u64>,
    dead: bool,
    writes: u64,
    syncs: u64,
    /// Appends and syncs asked for, whether they succeeded or not.
    attempts: u64,
    /// Every append fails with this errno after writing this many of its bytes.
    append_fault: Option<(i32, usize)>,
    /// Every sync fails with this errno and makes nothing durable.
    sync_fault: Option<i32>,
}

/// A simulated disk in the spirit of TigerBeetle's simulator. Writes go to a volatile
/// copy; `sync_segment` makes them durable. [`SimDisk::crash_after`] makes the disk die
/// after a number of mutating operations (every later operation fails), and
/// [`SimDisk::restart`] gives the disk as it would be found after a power loss: every
/// write not yet synced is dropped, except that a random prefix of the unsynced tail may
/// survive, with its last bytes possibly torn into garbage.
#[derive(Debug, Default)]
pub struct SimDisk {
    state: Mutex<SimState>,
}

fn dead_error() -> io::Error {
    io::Error::other("simulated disk has crashed")
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Lets `ops` more mutating operations (create, append, sync, truncate) succeed; the
    /// next one and all after it fail as if the machine had lost power.
    pub fn crash_after(&self, ops: u64) {
        self.state.lock().expect("lock").ops_left = Some(ops);
    }

    /// Whether the disk has died.
    pub fn is_dead(&self) -> bool {
        self.state.lock().expect("lock").dead
    }

    /// How many appends and syncs have succeeded so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock().expect("lock");
        (s.writes, s.syncs)
    }

    /// The disk as found after a power loss, chosen by `seed` among the possible ones.
    pub fn restart(&self, seed: u64) -> SimDisk {
        let mut rng = SimRng::new(seed);
        let s = self.state.lock().expect("lock");
        let mut files = BTreeMap::new();
        for (&id, f) in &s.files {
            let mut data = f.data[..f.synced_len].to_vec();
            let unsynced = &f.data[f.synced_len..];
            if !unsynced.is_empty() && rng.below(2) == 0 {
                // A prefix of the unsynced writes reached the platter.
                let keep = rng.below(unsynced.len() as u64 + 1) as usize;
                data.extend_from_slice(&unsynced[..keep]);
                if keep > 0 && rng.below(2) == 0 {
                    // The last sector was torn: some of its bytes are garbage.
                    let torn = 1 + rng.below(keep.min(64) as u64) as usize;
                    let len = data.len();
                    for b in &mut data[len - torn..] {
                        *b = rng.next_u64() as u8;
                    }
                }
            }
            let synced_len = data.len();
            files.insert(id, SimFile { data, synced_len });
        }
        SimDisk {
            state: Mutex::new(SimState {
                files,
                ..SimState::default()
            }),
        }
    }

    /// How many appends and syncs were asked for, including the failed ones.
    pub fn attempts(&self) -> u64 {
        self.state.lock().expect("lock").attempts
    }

    /// From now on every append fails with the OS error `errno` after writing at most
    /// `written_bytes` of its data, as a full disk does (a short write, then ENOSPC), or a
    /// read-only one (EROFS, nothing written). `None` lets appends through again.
    pub fn fail_appends(&self, fault: Option<(i32, usize)>) {
        self.state.lock().expect("lock").append_fault = fault;
    }

    /// From now on every sync fails with the OS error `errno` and makes nothing durable, as
    /// a failed fdatasync does (EIO, or ENOSPC on some file systems). `None` lets syncs
    /// through again.
    pub fn fail_syncs(&self, errno: Option<i32>) {
        self.state.lock().expect("lock").sync_fault = errno;
    }

    /// Flips one bit at `offset` of segment `id` in place, as bit rot would.
    pub fn corrupt(&self, id: u64, offset: usize) {
        let mut s = self.state.lock().expect("lock");
        let f = s.files.get_mut(&id).expect("segment exists");
        f.data[offset] ^= 0x10;
    }

    /// Overwrites bytes of segment `id` in place, durably, as a tamperer with disk access
    /// could.
    pub fn overwrite(&self, id: u64, offset: usize, bytes: &[u8]) {
        let mut s = self.state.lock().expect("lock");
        let f = s.files.get_mut(&id).expect("segment exists");
        f.data[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Spends one mutating operation, or fails if the disk is (now) dead.
    fn tick(s: &mut SimState) -> io::Result<()> {
        if s.dead {
            return Err(dead_error());
        }
        if let Some(n) = s.ops_left.as_mut() {
            if *n == 0 {
                s.dead = true;
                return Err(dead_error());
            }
            *n -= 1;
        }
        Ok(())
    }
}

impl Storage for SimDisk {
    fn list_segments(&self) -> io::Result<Vec<u64>> {
        Ok(self
            .state
            .lock()
            .expect("lock")
            .files
            .keys()
            .copied()
            .collect())
    }

    fn create_segment(&self, id: u64) -> io::Result<()> {
        let mut s = self.state.lock().expect("lock");
        SimDisk::tick(&mut s)?;
        if s.files.contains_key(&id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "segment exists",
            ));
        }
        // Creation is durable at once, as `FsStorage` syncs the directory before returning.
        s.files.insert(id, SimFile::default());
        Ok(())
    }

    fn segment_len(&self, id: u64) -> io::Result<u64> {
        let s = self.state.lock().expect("lock");
        let f = s
            .files
            .get(&id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(f.data.len() as u64)
    }

    fn append(&self, id: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock().expect("lock");
        s.attempts += 1;
        SimDisk::tick(&mut s)?;
        let fault = s.append_fault;
        let f = s
            .files
            .get_mut(&id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if let Some((errno, written)) = fault {
            f.data.extend_from_slice(&data[..written.min(data.len())]);
            return Err(io::Error::from_raw_os_error(errno));
        }
        f.data.extend_from_slice(data);
        s.writes += 1;
        Ok(())
    }

    fn sync_segment(&self, id: u64) -> io::Result<()> {
        let mut s = self.state.lock().expect("lock");
        s.attempts += 1;
        SimDisk::tick(&mut s)?;
        if let Some(errno) = s.sync_fault {
            return Err(io::Error::from_raw_os_error(errno));
        }
        s.syncs += 1;
        let f = s
            .files
            .get_mut(&id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        f.synced_len = f.data.len();
        Ok(())
    }

    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.state.lock().expect("lock");
        let f = s
            .files
            .get(&id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let start = (offset as usize).min(f.data.len());
        let n = buf.len().min(f.data.len() - start);
        buf[..n].copy_from_slice(&f.data[start..start + n]);
        Ok(n)
    }

    fn truncate_segment(&self, id: u64, len: u64) -> io::Result<()> {
        let mut s = self.state.lock().expect("lock");
        SimDisk::tick(&mut s)?;
        let f = s
            .files
            .get_mut(&id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        f.data.truncate(len as usize);
        f.synced_len = f.data.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keeps_synced_bytes_and_at_most_a_prefix_of_the_rest() {
        for seed in 0..200 {
            let d = SimDisk::new();
            d.create_segment(0).unwrap();
            d.append(0, b"durable").unwrap();
            d.sync_segment(0).unwrap();
            d.append(0, b"volatile").unwrap();
            let r = d.restart(seed);
            let mut buf = [0u8; 64];
            let n = r.read_at(0, 0, &mut buf).unwrap();
            assert!((7..=15).contains(&n), "seed {seed}: {n} bytes");
            assert_eq!(&buf[..7], b"durable");
        }
    }

    #[test]
    fn a_dead_disk_refuses_every_later_write() {
        let d = SimDisk::new();
        d.crash_after(2);
        d.create_segment(0).unwrap();
        d.append(0, b"a").unwrap();
        assert!(d.sync_segment(0).is_err());
        assert!(d.append(0, b"b").is_err());
        assert!(d.is_dead());
        assert_eq!(d.restart(1).segment_len(0).unwrap(), 0);
    }

    #[test]
    fn fs_storage_appends_reads_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        s.create_segment(3).unwrap();
        s.append(3, b"hello ").unwrap();
        s.append(3, b"world").unwrap();
        s.sync_segment(3).unwrap();
        assert_eq!(s.list_segments().unwrap(), vec![3]);
        let mut buf = [0u8; 32];
        assert_eq!(s.read_at(3, 6, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"world");
        s.truncate_segment(3, 5).unwrap();
        assert_eq!(s.segment_len(3).unwrap(), 5);
        assert!(s.create_segment(3).is_err());
    }
}
